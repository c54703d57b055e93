"""Bad input to the prunekit command: a one-line error naming the problem, exit code 2, no
traceback (unless --debug). Every case runs through ``prunekit.app.cli.main`` in this process (no
torch import per case); a few of them also as real subprocesses."""

import pytest
from _cli import run_many

SUBPROCESS_CASES = ("invalid choice", "but got '3:2'", "cannot write")


def main_in_process(args, capsys) -> tuple[int, str, str]:
    from prunekit.app.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse errors
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_input_is_a_one_line_error_with_exit_code_2(tiny_llama_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    not_a_model = tmp_path / "plain"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should go")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "report.json").write_text("{}")
    out = tmp_path / "out"
    prune = ["prune", tiny_llama_dir, "--method", "wanda", "--sparsity", "0.5", "--out", out]
    cases = {
        ("prune", tmp_path / "missing", "--method", "wanda", "--sparsity", "0.5", "--out", out): "no such directory",
        ("prune", not_a_model, "--method", "wanda", "--sparsity", "0.5", "--out", out): "no config.json",
        ("prune", blocker, "--method", "wanda", "--sparsity", "0.5", "--out", out): "is a file",
        ("prune", tiny_llama_dir, "--method", "nonsense", "--sparsity", "0.5", "--out", out): "invalid choice",
        ("prune", tiny_llama_dir, "--method", "wanda", "--sparsity", "3:2", "--out", out): "but got '3:2'",
        ("prune", tiny_llama_dir, "--method", "wanda", "--sparsity", "1.5", "--out", out): "but got '1.5'",
        tuple(prune + ["--calib", empty]): "is empty",
        tuple(prune + ["--calib", tmp_path / "nothing.txt"]): "no such file",
        tuple(prune + ["--calib", empty, "--calib-samples"]):
            "--calib, --calib-samples: expected one calibration source (a text file, or the model's own samples), but "
            "got both",
        tuple(prune[:-1] + [blocker / "out"]): "cannot write",
        tuple(prune[:-1] + [occupied]): "--overwrite",
        ("prune", tiny_llama_dir, "--method", "sparsegpt", "--sparsity", "0.5", "--refine", "dsnot", "--out", out):
            "cannot be combined with dsnot",
        tuple(prune + ["--set", "block_refine_steps"]): "--set: expected FIELD=VALUE, but got 'block_refine_steps'",
        tuple(prune + ["--set", "method=ria"]): "--set: method has its own option (--method)",
        tuple(prune + ["--set", "no_such_field=1"]): "--set: got 'no_such_field', but expected a PruneConfig field",
        tuple(prune + ["--set", "loss_fn=mse"]): "--set: got 'loss_fn', but expected",
        tuple(prune + ["--refine", "block", "--set", "block_refine_steps=0"]):
            "PruneConfig.block_refine_steps: expected an int in [1, 10000], but got 0",
        ("eval", tmp_path / "missing"): "no such directory",
        ("eval", tiny_llama_dir, "--data", empty): "is empty",
        ("bench", "--only", "nonsense"): "unknown benchmark",
        ("demo", "--sparsities", "0.5,9:4", "--out", ""): "but got '9:4'",
    }
    outcomes = [(args, *main_in_process(args, capsys)) for args in cases]
    subprocess_cases = [args for args, expected in cases.items() if expected in SUBPROCESS_CASES]
    outcomes += [(r.args, r.returncode, r.stdout, r.stderr) for r in run_many(*subprocess_cases)]
    expected_of = {tuple(map(str, args)): expected for args, expected in cases.items()}
    for args, code, stdout, stderr in outcomes:
        assert code == 2, (args, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"prunekit {args[0]}: error: "), (args, lines)
        assert expected_of[tuple(map(str, args))] in lines[0], (args, lines)
        assert stdout == ""
    assert len(outcomes) == len(cases) + len(subprocess_cases)
    assert not out.exists()  # nothing is created when the input is bad


def test_debug_raises_instead(tmp_path):
    from prunekit.app.cli import main

    with pytest.raises(ValueError, match="MODEL: no such directory"):
        main(["prune", str(tmp_path / "missing"), "--method", "wanda", "--sparsity", "0.5", "--out",
              str(tmp_path / "out"), "--debug"])


@pytest.mark.parametrize("text, expected", [("0.5", 0.5), ("0", 0.0), ("2:4", "2:4"), (" 1:8 ", "1:8")])
def test_parse_sparsity(text, expected):
    from prunekit.app.cli.common import parse_sparsity

    assert parse_sparsity(text) == expected


@pytest.mark.parametrize("text", ["3:2", "1.5", "1", "-0.1", "half", "2:4:8", "0:4", "nan", "2:"])
def test_parse_sparsity_rejects(text):
    from prunekit.app.cli.common import UsageError, parse_sparsity

    with pytest.raises(UsageError, match="--sparsity: expected a fraction"):
        parse_sparsity(text)
