"""The kernel microbenchmarks behind ``prunekit bench`` and ``bench/bench_*.py``.

One module per family (``linear``, ``conv``, ``sparsegpt``, ``formats``, ``cuda``), each with
``run(quick=False, progress=False, on_row=None) -> rows`` (timings side by side in one process),
``summarize(rows)`` (speed-up ratios against the torch baseline), ``describe(row)`` (one line),
and ``NAME``, ``TITLE``, ``COLUMNS`` for its result files. Shapes live in :mod:`.shapes`, timing
and machine information in :mod:`.common`. Nothing here prints; callers decide what to show.
:mod:`.break_even` is not a family: it measures the break-even table of "auto"
(``bench/bench_break_even.py``, 1 thread, about 17 minutes).
"""

from __future__ import annotations

import importlib
import logging
import time

logger = logging.getLogger(__name__)

FAMILIES = ("linear", "conv", "sparsegpt", "formats", "cuda", "gemm24_cuda", "sparse_cuda", "sparsegpt_cuda")
SUMMARY_COLUMNS = ["benchmark", "case", "baseline", "speedup", "min", "max", "n"]


def family(name: str):
    """The module of one benchmark family."""
    if name not in FAMILIES:
        raise ValueError(f"bench: unknown benchmark {name!r}; expected one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{name}")


def run(names=FAMILIES, quick: bool = False, progress: bool = False, on_row=None) -> dict:
    """Runs the named families; returns {"machine", "quick", "results": {name: {"rows", "summary",
    "seconds"} or {"skipped": why}}, "summary": all summary rows}. ``on_row(name, row)`` is called
    as each row is ready."""
    from .common import machine_info

    results, summary = {}, []
    for name in names:
        module = family(name)
        if hasattr(module, "available"):
            ok, why = module.available()
            if not ok:
                logger.info("bench %s: skipped (%s)", name, why)
                results[name] = {"skipped": why}
                continue
        started = time.perf_counter()
        rows = module.run(quick, progress=progress,
                          on_row=None if on_row is None else (lambda row, name=name: on_row(name, row)))
        rows_summary = module.summarize(rows)
        results[name] = {"rows": rows, "summary": rows_summary, "seconds": time.perf_counter() - started}
        summary += rows_summary
        logger.info("bench %s: %d rows in %.1f s", name, len(rows), results[name]["seconds"])
    return {"machine": machine_info(), "quick": quick, "results": results, "summary": summary}
