"""Where the CPU sparse kernels break even with dense torch: the measurement behind "auto"
(:data:`prunekit.nn.BREAK_EVEN_SPARSITY_BY_ISA`, one table per kind of CPU kernels).

``isa`` forces the kind of prunekit's kernels measured (``prunekit._C._set_cpu_isa``), so one
machine measures the AVX2 table as well as its own; the dense side must then be held to the same
ISA, which only environment variables read at process start can do (:data:`DENSE_ISA_ENV`:
ATen's kernels, MKL's GEMMs, oneDNN's bf16 GEMMs): :func:`dense_isa_env` gives them, and
``bench/bench_break_even.py --isa avx2`` restarts itself with them. The result files record the
CPU model, the kernels selected and torch's capability.

Times the modules a model runs (SparseLinear / SparseConv2d holding an unstructured weight, so the
kernel each picks for the rows per call, against nn.Linear / nn.Conv2d) across sparsities, rows
per call and weight dtypes, the way a model's forward sees them: each call meets a different copy
of the weight (copies adding up to :data:`COLD_BYTES`, so that weights come from L3 or DRAM, not
L2; with hot weights dense looks better than it is), on 1 thread, in thread CPU time (other
load on a shared machine does not count). :func:`break_even_table` turns the rows into "auto"'s
table: per kernel, dtype and rows, the lowest sparsity from which the sparse module wins (or ties,
within :data:`PARITY`) on every shape, in every repeat, at every sparsity measured above it.
"""

from __future__ import annotations

import itertools
import math
import os

import torch
import torch.nn as nn

from prunekit._names import dtype_name
from prunekit.nn.measure import cpu_us_per_call
from .common import copies_totalling, progress_bar
from .shapes import MINILM_L6, MOBILENET_V1_POINTWISE

NAME = "break_even_cpu"
TITLE = ("Sparse vs dense torch modules across sparsity: where the CPU kernels break even (1 thread, CPU time, "
         "cold weights)")
COLUMNS = ["isa", "kernel", "dtype", "shape", "rows", "sparsity", "repeat", "sparse_us", "dense_us", "speedup"]
QUICK = "one linear and one conv shape, sparsity 0.5 and 0.9, rows 1 and 16, short timings"

LINEAR_SHAPES = {**MINILM_L6, "square2048": (2048, 2048)}
CONV1X1_SHAPES = {name: MOBILENET_V1_POINTWISE[name] for name in ("mobilenet_v1.pw4", "mobilenet_v1.pw6",
                                                                  "mobilenet_v1.pw8")}
ROWS = (1, 4, 16, 32, 64, 128)
SPARSITIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# A speed-up this close to 1 counts as break-even: timings of one case vary by a few percent from
# run to run, and at parity the sparse format still holds less memory.
PARITY = 0.97
COLD_BYTES = 16 << 20  # weight copies per case: at least this many bytes, several times an L2
MAX_COPIES = 1024  # 384x384 bf16 at 0.95 needs ~330
# What holds dense torch to an ISA (read when torch loads): ATen's vectorised kernels, MKL's GEMMs
# (fp32 F.linear), oneDNN's (bf16 F.linear, convolutions). Empty: the machine's own best.
DENSE_ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {},
}


def dense_isa_env(isa: str | None) -> dict[str, str]:
    """The environment variables that hold dense torch to ``isa`` (none for None or "avx512")."""
    if isa is None:
        return {}
    if isa not in DENSE_ISA_ENV:
        raise ValueError(f"break_even: argument 'isa' must be one of {sorted(DENSE_ISA_ENV)} or None, but got {isa!r}")
    return dict(DENSE_ISA_ENV[isa])


def dense_isa_missing(isa: str | None) -> dict[str, str]:
    """The variables of :func:`dense_isa_env` this process was not started with."""
    return {key: value for key, value in dense_isa_env(isa).items() if os.environ.get(key) != value}


def isa_info() -> dict:
    """What ran: prunekit's selected kernels, torch's CPU capability, the dense ISA variables."""
    import prunekit

    info = prunekit.build_info()
    names = sorted({key for env in DENSE_ISA_ENV.values() for key in env})
    return {"cpu_isa_selected": info["cpu_isa_selected"],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "dense_isa_env": {key: os.environ[key] for key in names if key in os.environ}}


def _weight(rows: int, cols: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(rows, cols, generator=generator)
    weight[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    return weight


def _copies(make, cold_bytes: int) -> list[nn.Module]:
    """Modules from ``make()`` until they hold ``cold_bytes`` in all (at least two)."""
    from prunekit.surgery import model_bytes

    return copies_totalling(make, cold_bytes, model_bytes, MAX_COPIES)


def _cases(quick: bool):
    """(kernel, dtype, shape name, shape, rows per call to time) in the order they run."""
    linear_shapes = {"minilm.output": LINEAR_SHAPES["minilm.output"]} if quick else LINEAR_SHAPES
    conv_shapes = {"mobilenet_v1.pw8": CONV1X1_SHAPES["mobilenet_v1.pw8"]} if quick else CONV1X1_SHAPES
    for dtype, (name, shape) in itertools.product((torch.float32, torch.bfloat16), linear_shapes.items()):
        yield "linear", dtype, name, shape, (1, 16) if quick else ROWS
    for name, shape in conv_shapes.items():
        yield "conv1x1", torch.float32, name, shape, (1,)


def run(quick: bool = False, *, sparsities=None, min_time: float | None = None, rounds: int = 2,
        repeats: int = 1, cold_bytes: int = COLD_BYTES, progress: bool = False, on_row=None,
        isa: str | None = None) -> list[dict]:
    """One row per (kernel, dtype, shape, rows, sparsity, repeat): CPU microseconds per call of
    the sparse module and of the dense one (the fastest of ``rounds`` alternating rounds), on 1
    thread. ``repeats`` > 1 measures everything again that many times (new weights each time):
    :func:`break_even_table` keeps each case's worst repeat, as a case can swing widely between
    runs on a shared machine. ``isa``: the kind of prunekit kernels to measure ("avx2",
    "avx512"; default the machine's); dense torch runs what the process was started with
    (:func:`dense_isa_env`)."""
    import prunekit
    from prunekit.nn import SparseConv2d, SparseLinear

    if isa is not None:
        dense_isa_env(isa)  # validates
        if isa not in prunekit.build_info()["cpu_isas_runnable"]:
            raise ValueError(f"break_even: argument 'isa' is {isa!r}, but this CPU runs only "
                             f"{prunekit.build_info()['cpu_isas_runnable']}")
        prunekit._C._set_cpu_isa(isa)
    kind = prunekit.build_info()["cpu_isa_selected"]

    sparsities = sparsities or ((0.5, 0.9) if quick else SPARSITIES)
    min_time = min_time or (0.02 if quick else 0.15)
    generator = torch.Generator().manual_seed(0)
    cases = list(_cases(quick))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows_out = []
    try:
        total = sum(len(case[4]) for case in cases) * len(sparsities) * repeats
        with progress_bar(total, "bench break-even", progress) as bar:
            for repeat, (kernel, dtype, name, shape, rows_list), sparsity in itertools.product(
                    range(repeats), cases, sparsities):
                if kernel == "linear":
                    out_features, in_features = shape

                    def make_dense():
                        layer = nn.Linear(in_features, out_features, dtype=dtype)
                        with torch.no_grad():
                            layer.weight.copy_(_weight(out_features, in_features, sparsity, generator))
                        return layer

                    sparse_from = SparseLinear.from_dense
                    inputs = {rows: torch.randn(rows, in_features, generator=generator).to(dtype) for rows in rows_list}
                else:
                    out_channels, in_channels, side = shape

                    def make_dense():
                        conv = nn.Conv2d(in_channels, out_channels, 1)
                        with torch.no_grad():
                            conv.weight.copy_(_weight(out_channels, in_channels, sparsity, generator)[:, :, None, None])
                        return conv

                    sparse_from = SparseConv2d.from_dense
                    inputs = {1: torch.randn(1, in_channels, side, side, generator=generator)}
                dense = _copies(make_dense, cold_bytes)
                sparse = _copies(lambda: sparse_from(make_dense(), "unstructured"), cold_bytes)
                for rows, x in inputs.items():
                    best = {"sparse": math.inf, "dense": math.inf}
                    for _ in range(rounds):
                        best["sparse"] = min(best["sparse"], cpu_us_per_call(sparse, x, min_time))
                        best["dense"] = min(best["dense"], cpu_us_per_call(dense, x, min_time))
                    row = {"isa": kind, "kernel": kernel, "dtype": dtype_name(dtype), "shape": name, "rows": rows,
                           "sparsity": sparsity, "repeat": repeat, "sparse_us": best["sparse"],
                           "dense_us": best["dense"], "speedup": best["dense"] / best["sparse"]}
                    rows_out.append(row)
                    bar.update()
                    if on_row is not None:
                        on_row(row)
    finally:
        torch.set_num_threads(threads)
        if isa is not None:
            prunekit._C._set_cpu_isa("")
    return rows_out


def break_even_table(rows: list[dict]) -> list[dict]:
    """Per (kernel, dtype, rows per call): the measured break-even, the lowest sparsity from which
    the sparse module is at least as fast as dense (within :data:`PARITY`) on every shape, in
    every repeat, at every sparsity measured from there up (None: it loses at the highest), beside
    the one "auto" uses now."""
    from prunekit.nn import break_even_sparsity

    kinds = {row.get("isa", "avx512") for row in rows}
    if len(kinds) != 1:
        raise ValueError(f"break_even_table: the rows must come from one kind of kernels, but got {sorted(kinds)}")
    kind = kinds.pop()
    groups: dict[tuple, dict[float, list[float]]] = {}
    for row in rows:
        key = (row["kernel"], row["dtype"], row["rows"])
        groups.setdefault(key, {}).setdefault(row["sparsity"], []).append(row["speedup"])
    table = []
    for (kernel, dtype, rows_per_call), by_sparsity in groups.items():
        measured = None
        for sparsity in sorted(by_sparsity, reverse=True):
            if min(by_sparsity[sparsity]) < PARITY:
                break
            measured = sparsity
        lowest = min(by_sparsity)
        table.append({
            "kernel": kernel, "dtype": dtype, "rows": rows_per_call, "measured_break_even": measured,
            "table_break_even": break_even_sparsity(kernel, getattr(torch, dtype), rows_per_call, kind=kind),
            "speedup_at_lowest": min(by_sparsity[lowest]), "lowest_sparsity": lowest,
            "speedup_at_0.9": min(by_sparsity[0.9]) if 0.9 in by_sparsity else None,
        })
    return table


def table_entry(table: list[dict]) -> str:
    """:func:`break_even_table`'s result as the Python entry of ``BREAK_EVEN_SPARSITY_BY_ISA`` (to
    paste into prunekit/nn/auto.py): per kernel and dtype ((max rows, break-even), ...), runs of
    equal break-even merged, the last rows open (None). Measured sparsities only: a kernel that
    loses at the highest gives None."""
    by_key: dict[tuple, list[tuple]] = {}
    for row in table:
        by_key.setdefault((row["kernel"], row["dtype"]), []).append((row["rows"], row["measured_break_even"]))
    lines = ["{"]
    for kernel in dict.fromkeys(kernel for kernel, _ in by_key):
        entries = []
        for (each_kernel, dtype), points in by_key.items():
            if each_kernel != kernel:
                continue
            merged: list[list] = []
            for rows, value in sorted(points):
                if merged and merged[-1][1] == value:
                    merged[-1][0] = rows
                else:
                    merged.append([rows, value])
            merged[-1][0] = None
            entries.append(f"torch.{dtype}: ({', '.join(f'({r}, {v})' for r, v in merged)},)")
        lines.append(f"    \"{kernel}\": {{{', '.join(entries)}}},")
    lines.append("    \"conv\": {},")
    lines.append("}")
    return "\n".join(lines)


TABLE_COLUMNS = ["kernel", "dtype", "rows", "measured_break_even", "table_break_even", "lowest_sparsity",
                 "speedup_at_lowest", "speedup_at_0.9"]


def describe(row: dict) -> str:
    return (f"{row.get('isa', ''):>6} {row['kernel']:>8} {row['dtype']:>8} {row['shape']:>20} rows {row['rows']:<3} "
            f"{row['sparsity']:.2f}: sparse {row['sparse_us']:8.1f} us, dense {row['dense_us']:8.1f} us "
            f"({row['speedup']:5.2f}x)")
