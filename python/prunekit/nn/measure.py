"""``PRUNEKIT_AUTO=measure``: this machine's own break-even table, from a short measurement.

For a CPU whose kind of kernels has no measured table (:data:`prunekit.nn.auto.BREAK_EVEN_SPARSITY_BY_ISA`),
or when asked for everywhere: SparseLinear holding an unstructured weight against nn.Linear, one
1024 x 1024 shape, fp32 and bf16, the sparsities of :data:`SPARSITIES` and the rows per call of
:data:`ROWS`, on 1 thread in thread CPU time with the weights cold (copies past the L2), as the
full benchmark (``bench/bench_break_even.py``) does in about 17 minutes. This takes about 10 to 40
seconds (more on a busy machine), once per machine: the result is cached in ``$PRUNEKIT_CACHE``
(default ``~/.cache/prunekit``) under ``auto/``, keyed by the CPU model, the kind of kernels, the
CPU features and the prunekit and torch versions; a cache directory that cannot be written only
costs the measurement again in the next process (with a warning). Pointwise convolutions are not
measured: they stay dense.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

SHAPE = (1024, 1024)  # (out, in): 4 MiB in fp32, large enough that the kernels stream it
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
ROWS = (1, 4, 16, 128)
DTYPES = (torch.float32, torch.bfloat16)
PARITY = 0.97  # as the full benchmark: within 3% of dense counts as break-even
COLD_BYTES = 16 << 20
MIN_TIME = 0.02  # seconds of CPU time per timing
ROUNDS = 2

_TABLES: dict[str, dict] = {}  # cache key -> tables, for this process


def cache_dir() -> Path:
    """Where measured tables are kept: ``$PRUNEKIT_CACHE/auto``, default ``~/.cache/prunekit/auto``."""
    return Path(os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit") / "auto"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model name")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(kind: str) -> dict:
    """What a cached measurement must match: CPU model, kernel kind, CPU features, versions."""
    from .. import build_info

    info = build_info()
    return {"cpu": _cpu_model(), "kind": kind, "features": list(info["cpu_features"]),
            "bf16_spmm": info["cpu_bf16_spmm"], "prunekit": info["version"], "torch": torch.__version__}


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"break_even-{key['kind']}-{digest}.json"


def _to_json(tables: dict) -> dict:
    return {kernel: {str(dtype).removeprefix("torch."): [list(entry) for entry in table]
                     for dtype, table in by_dtype.items()} for kernel, by_dtype in tables.items()}


def _from_json(data: dict) -> dict:
    return {kernel: {getattr(torch, dtype): tuple(tuple(entry) for entry in table) for dtype, table in by_dtype.items()}
            for kernel, by_dtype in data.items()}


def measured_tables(kind: str) -> dict:
    """The break-even tables of this machine for the kernel ``kind`` ({"linear": {dtype:
    ((max rows, sparsity or None), ...)}}): from this process, else the cache, else measured now
    (with the kind's kernels selected) and cached."""
    key = machine_key(kind)
    path = _cache_path(key)
    if str(path) in _TABLES:
        return _TABLES[str(path)]
    tables = None
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                tables = _from_json(data["tables"])
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
            logger.warning("PRUNEKIT_AUTO=measure: ignoring unreadable cached table %s (%r); measuring again", path,
                           error)
    if tables is None:
        started = time.perf_counter()
        rows = measure(kind)
        tables = tables_from_rows(rows)
        logger.info("PRUNEKIT_AUTO=measure: measured the %s break-even in %.1f s: %s", kind,
                    time.perf_counter() - started, tables)
        _write(path, {"key": key, "tables": _to_json(tables), "rows": rows})
    _TABLES[str(path)] = tables
    return tables


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("PRUNEKIT_AUTO=measure: cannot write the measured table to %s (%s); it is kept for this "
                       "process only (set PRUNEKIT_CACHE to a writable directory)", path, error)


def cpu_us_per_call(modules: list[nn.Module], x: torch.Tensor, min_time: float) -> float:
    """Thread CPU time per call in microseconds, calling the modules in turn until ``min_time``
    seconds and every module twice have passed (after one warm-up pass). Thread time, not wall
    time: what another process takes from this core is not counted."""
    with torch.inference_mode():
        for module in modules:
            module(x)
        calls, start = 0, time.thread_time_ns()
        while True:
            for module in modules:
                module(x)
            calls += len(modules)
            elapsed = time.thread_time_ns() - start
            if elapsed >= min_time * 1e9 and calls >= 2 * len(modules):
                return elapsed / calls / 1e3


def measure(kind: str, *, shape: tuple[int, int] | None = None, sparsities=None, rows_per_call=None,
            dtypes=None) -> list[dict]:
    """One row per (dtype, sparsity, rows): CPU microseconds per call of SparseLinear
    (unstructured) and of nn.Linear, on 1 thread, with the ``kind`` kernels selected (defaults:
    :data:`SHAPE`, :data:`SPARSITIES`, :data:`ROWS`, :data:`DTYPES`)."""
    shape = SHAPE if shape is None else shape
    sparsities = SPARSITIES if sparsities is None else sparsities
    rows_per_call = ROWS if rows_per_call is None else rows_per_call
    dtypes = DTYPES if dtypes is None else dtypes
    from .. import _C, build_info
    from .linear import SparseLinear

    info = build_info()
    previous_kind = info["cpu_isa_selected"]
    restore = "" if previous_kind == info["cpu_isa_detected"] else previous_kind
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    out_features, in_features = shape
    results = []
    try:
        if kind != previous_kind:
            _C._set_cpu_isa(kind)
        torch.set_num_threads(1)
        for dtype in dtypes:
            copies = max(2, -(-COLD_BYTES // (out_features * in_features * dtype.itemsize)))
            for sparsity in sparsities:
                dense = []
                for _ in range(copies):
                    layer = nn.Linear(in_features, out_features, bias=False, dtype=dtype)
                    with torch.no_grad():
                        weight = torch.randn(out_features, in_features, generator=generator)
                        weight[torch.rand(out_features, in_features, generator=generator) < sparsity] = 0
                        layer.weight.copy_(weight)
                    dense.append(layer)
                sparse = [SparseLinear.from_dense(layer, "unstructured") for layer in dense]
                for rows in rows_per_call:
                    x = torch.randn(rows, in_features, generator=generator).to(dtype)
                    sparse_us = dense_us = float("inf")
                    for _ in range(ROUNDS):
                        sparse_us = min(sparse_us, cpu_us_per_call(sparse, x, MIN_TIME))
                        dense_us = min(dense_us, cpu_us_per_call(dense, x, MIN_TIME))
                    results.append({"kernel": "linear", "dtype": str(dtype).removeprefix("torch."), "rows": rows,
                                    "sparsity": sparsity, "sparse_us": sparse_us, "dense_us": dense_us,
                                    "speedup": dense_us / sparse_us})
    finally:
        torch.set_num_threads(threads)
        if kind != previous_kind:
            _C._set_cpu_isa(restore)
    return results


def tables_from_rows(rows: list[dict], parity: float = PARITY) -> dict:
    """"auto"'s tables from measured rows: per kernel, dtype and rows per call, the lowest
    sparsity from which the sparse module wins (within ``parity``) at every sparsity measured
    from there up (None: it loses at the highest); ((max rows, sparsity), ..., (None, last))."""
    groups: dict[tuple, dict[int, dict[float, float]]] = {}
    for row in rows:
        by_rows = groups.setdefault((row["kernel"], row["dtype"]), {})
        speedups = by_rows.setdefault(row["rows"], {})
        speedups[row["sparsity"]] = min(speedups.get(row["sparsity"], float("inf")), row["speedup"])
    tables: dict[str, dict] = {}
    for (kernel, dtype), by_rows in groups.items():
        entries = []
        for rows_per_call in sorted(by_rows):
            threshold = None
            for sparsity in sorted(by_rows[rows_per_call], reverse=True):
                if by_rows[rows_per_call][sparsity] < parity:
                    break
                threshold = sparsity
            entries.append([rows_per_call, threshold])
        entries[-1][0] = None
        tables.setdefault(kernel, {})[getattr(torch, dtype)] = tuple(tuple(entry) for entry in entries)
    return tables
