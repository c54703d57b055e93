"""Where a pruning run spends its time: exclusive wall-clock seconds per stage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Accumulates wall-clock seconds per named stage. Stages nest and are exclusive: the time of
    a stage entered inside another (statistics hooks inside a block's forward) counts for the
    inner stage only, so the stages add up to the time spent inside any of them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, started, seconds of inner stages]

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        entry = [name, time.perf_counter(), 0.0]
        self._stack.append(entry)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - entry[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - entry[2]
            if self._stack:
                self._stack[-1][2] += elapsed

    def rounded(self, digits: int = 4) -> dict[str, float]:
        return {name: round(seconds, digits) for name, seconds in self.seconds.items()}


def stage(timer: StageTimer | None, name: str):
    """``timer.stage(name)``, or a no-op without a timer."""
    return contextlib.nullcontext() if timer is None else timer.stage(name)
