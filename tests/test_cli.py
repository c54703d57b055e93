"""The placeholder command line, end to end in a subprocess."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, timeout=300)


def test_info_prints_build_info_as_json():
    result = run("info")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert {"version", "torch_version", "cpu_isa_selected", "threads"} <= info.keys()


def test_demo_round_trip_is_exact():
    result = run("demo", "--rows", "64", "--cols", "128")
    assert result.returncode == 0, result.stderr
    assert "all round trips exact" in result.stdout


def test_bad_demo_shape_is_a_one_line_error_with_exit_code_2():
    result = run("demo", "--rows", "48", "--cols", "128")
    assert result.returncode == 2
    assert "must be a multiple of 32, but got 48" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_of_every_subcommand():
    for args in (["--help"], ["info", "--help"], ["demo", "--help"]):
        assert run(*args).returncode == 0
