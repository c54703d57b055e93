"""Running the ``prunekit`` command in subprocesses, several at a time."""

import json
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    args: tuple
    returncode: int
    stdout: str
    stderr: str


def command(*args) -> list[str]:
    return [sys.executable, "-m", "prunekit", *map(str, args)]


def run(*args, timeout: float = 600) -> Result:
    done = subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout)
    return Result(args, done.returncode, done.stdout, done.stderr)


def run_many(*arg_lists, timeout: float = 600) -> list[Result]:
    """Runs several commands at once (each pays the import of torch; in parallel that costs less
    wall time) and returns their results in order."""
    processes = [(args, subprocess.Popen(command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
                 for args in arg_lists]
    results = []
    for args, process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(Result(tuple(args), process.returncode, stdout, stderr))
    return results


def json_stdout(result: Result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
