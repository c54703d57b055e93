"""Writing the final checkpoint of a run once, atomically, after every rank got there."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable

from .strategy import SingleProcessStrategy, strategy_for


def _replace(tmp: str, path: str) -> None:
    """Moves the finished ``tmp`` to ``path``: one os.replace for a file; a directory (e.g. a
    save_pretrained folder) replacing an existing one moves the old one aside first and deletes
    it after, so ``path`` never holds a partial checkpoint."""
    if not (os.path.isdir(tmp) and os.path.isdir(path)):
        os.replace(tmp, path)
        return
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{os.getpid()}")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except Exception:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(path: str | os.PathLike, write: Callable[[str], None],
                    strategy: SingleProcessStrategy | None = None, *, group=None) -> None:
    """Writes the final checkpoint safely: every rank calls this after a successful run; once all
    arrived (an error check, so a failure elsewhere stops everyone first), rank 0 calls
    ``write(tmp)`` for a temporary path next to ``path`` and renames it to ``path`` with
    ``os.replace``; a failed write removes the temporary file and raises on every rank. Other
    ranks write nothing. ``write`` may create a file or a directory (``save_pretrained``); an
    existing checkpoint at ``path`` is replaced only once the new one is complete. ``strategy``
    defaults to the process group ``group`` (the default group) when one with more than one rank
    is initialised, else this process alone."""
    if strategy is None:
        strategy = strategy_for(None, group)
    path = os.fspath(path)
    what = f"saving the checkpoint {path}"
    strategy.check(None, f"the run before {what}")
    error = None
    if strategy.is_main:
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
        try:
            write(tmp)
            if not os.path.exists(tmp):
                raise RuntimeError(f"save_checkpoint: write: expected it to create {tmp!r}, but it did not")
            _replace(tmp, path)
        except Exception as caught:
            error = caught
            with contextlib.suppress(OSError):
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp)
                else:
                    os.remove(tmp)
    strategy.check(error, what)
