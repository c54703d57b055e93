"""The library stands without the application: importing prunekit, or any of its library modules,
loads nothing of prunekit.app; the command is prunekit.app.cli.main under both its names."""

import subprocess
import sys
import textwrap


LIBRARY_IMPORTS = """
import importlib, pkgutil, sys
import prunekit

def library_modules(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name in ("prunekit.app", "prunekit.__main__"):  # __main__ would run the command
            continue
        module = importlib.import_module(info.name)
        yield info.name
        if info.ispkg:
            yield from library_modules(module)

names = list(library_modules(prunekit))
assert "prunekit.hf" in names and "prunekit.prune" in names, names
print(sorted(name for name in sys.modules if name == "prunekit.app" or name.startswith("prunekit.app.")))
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_prunekit_leaves_the_application_out():
    assert _run("import sys, prunekit; print(sorted(n for n in sys.modules if n.startswith('prunekit.app')))") == "[]"


def test_no_library_module_imports_the_application():
    assert _run(LIBRARY_IMPORTS) == "[]"


def test_python_m_prunekit_and_the_console_script_run_the_cli_main():
    from importlib.metadata import entry_points

    from prunekit.app.cli import main

    (script,) = entry_points(group="console_scripts", name="prunekit")
    # an editable install keeps the entry point it was installed with: pip install -e . refreshes it
    assert script.value == "prunekit.app.cli:main", f"installed entry point {script.value}: reinstall prunekit"
    assert script.load() is main
    done = subprocess.run([sys.executable, "-m", "prunekit", "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("usage: prunekit"), done.stderr
