"""``format="auto"``: which format a weight is held in, and which CPU kernel runs it.

Batch 1 is the workload prunekit targets; the rows per call (tokens of a sequence) move every
threshold here. The break-even tables are per kind of CPU kernels, the ISA whose kernels will run
(``build_info()["cpu_isa_selected"]``: "avx512", "avx2", "neon", "scalar"); one machine's table
is never applied to another kind. They are measured by ``bench/bench_break_even.py`` (``--isa``
forces a kind; figures in docs/performance.md and bench/results/break_even_cpu*.md); each is
((max rows, entry), ...) in increasing rows, None rows = any more.

A kind without a table (nothing measured for it yet: today "neon" and "scalar") keeps every
weight dense, unless ``PRUNEKIT_AUTO=measure``: then a short
measurement on this machine (:mod:`prunekit.nn.measure`, a few seconds, cached per machine under
the prunekit cache directory) gives the table, for every kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .._names import dtype_name
from ..formats.semi24 import first_dense_group, layout_problem

# From which sparsity the sparse module beats dense torch, per CPU kernel family and weight dtype,
# with the weight coming from memory as in a model's forward; None: the kernel never wins there.
# "conv" (any non-pointwise conv) has no entry: im2col + the bitmap SpMM loses to oneDNN's conv.
# Measured with the AVX-512 kernels (Xeon, AVX-512 BF16; bench/results/break_even_cpu.md).
BREAK_EVEN_SPARSITY = {
    "linear": {torch.float32: ((4, 0.5), (128, 0.6), (None, 0.7)),
               torch.bfloat16: ((4, 0.5), (16, 0.85), (None, None))},
    "conv1x1": {torch.float32: ((None, 0.6),)},
    "conv": {},
}
# The AVX2 kernels against torch's dense kernels (bench/bench_break_even.py --isa avx2;
# bench/results/break_even_cpu_avx2.md), measured on an AVX2-only AMD EPYC Zen 3. Above 4 rows (the
# SpMM) each entry is the higher of Zen 3's and an AVX-512 Zen 5's with both held to AVX2. Torch's
# dense bf16 has no bf16 arithmetic there, so sparse bf16 wins from 50% at every row count.
BREAK_EVEN_SPARSITY_AVX2 = {
    "linear": {torch.float32: ((4, 0.5), (32, 0.7), (64, 0.6), (None, 0.7)),
               torch.bfloat16: ((None, 0.5),)},
    "conv1x1": {torch.float32: ((None, 0.6),)},
    "conv": {},
}
# The tables per kind of CPU kernels (the selected ISA); a kind without one (NEON, scalar) keeps
# dense unless PRUNEKIT_AUTO=measure measures this machine.
BREAK_EVEN_SPARSITY_BY_ISA: dict[str, dict[str, dict[torch.dtype, tuple]]] = {
    "avx512": BREAK_EVEN_SPARSITY,
    "avx2": BREAK_EVEN_SPARSITY_AVX2,
}
# bf16 linear where prunekit's bf16 path runs on AMX (> 4 rows, build_info()["cpu_bf16_spmm"]):
# it does not skip zeros but matches dense AMX, so sparse wins lower; above 128 rows unmeasured.
BREAK_EVEN_SPARSITY_AMX = {"linear": {torch.bfloat16: ((16, 0.5), (128, 0.8), (None, 0.85))}}
DEFAULT_ROWS = 16  # rows per call "auto" assumes: one sentence / a short prompt at batch 1
AUTO_ENV = "PRUNEKIT_AUTO"  # "tables" (default): the measured tables; "measure": this machine's own
AUTO_MODES = ("tables", "measure")

# The formats prunekit's CPU kernels run, per kind of CPU kernels (the bitmap kernels run a 2:4
# weight through its bitmap view). A format a kind does not list is loaded dense (exactly).
CPU_KERNEL_FORMATS = {isa: ("unstructured", "2:4") for isa in ("avx512", "avx2", "neon", "scalar")}

# From which sparsity prunekit's CUDA kernels beat cuBLAS, per GPU architecture ("sm80", "sm90": the
# compute capability, :func:`cuda_arch`), kernel family ("linear": unstructured weights on the
# tiled bitmap kernels; "linear24": 2:4 weights; "conv1x1") and weight dtype, as in the CPU
# tables: ((max rows, sparsity or None), ...). Measured on the GPU by
# bench/bench_break_even_cuda.py, which prints the entry; empty until then, and where a GPU has no
# entry "auto" keeps dense on it.
BREAK_EVEN_SPARSITY_CUDA: dict[str, dict[str, dict[torch.dtype, tuple]]] = {"sm80": {}, "sm90": {}}
_CUDA_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KERNEL_DTYPES = {"linear": (torch.float32, torch.bfloat16), "conv1x1": (torch.float32,), "conv": ()}


def _bf16_spmm_on_amx() -> bool:
    from .. import build_info

    return build_info()["cpu_bf16_spmm"] == "amx"


def cpu_kernel_kind() -> str:
    """The kind of CPU kernels that run here: the selected ISA ("avx512", "avx2", "neon",
    "scalar"; ``prunekit._C._set_cpu_isa`` forces one)."""
    from .. import build_info

    return build_info()["cpu_isa_selected"]


def auto_mode() -> str:
    """``$PRUNEKIT_AUTO``: "tables" (default) or "measure" (see the module docstring)."""
    mode = os.environ.get(AUTO_ENV, "").strip().lower() or "tables"
    if mode not in AUTO_MODES:
        raise ValueError(f"environment variable {AUTO_ENV} must be one of {AUTO_MODES} (or unset), but got "
                         f"{os.environ.get(AUTO_ENV)!r}")
    return mode


def cpu_break_even_tables(kind: str | None = None) -> tuple[dict | None, str]:
    """(tables, source) of the CPU break-even for the kernel ``kind`` (default: this machine's,
    :func:`cpu_kernel_kind`): under ``PRUNEKIT_AUTO=measure`` this machine's own measurement
    (cached), else the measured table of the kind; (None, why) where there is none."""
    kind = cpu_kernel_kind() if kind is None else kind
    if auto_mode() == "measure":
        from .measure import measured_tables

        return measured_tables(kind), f"measured on this machine ({kind} kernels)"
    tables = BREAK_EVEN_SPARSITY_BY_ISA.get(kind)
    if not tables:
        return None, (f"no break-even table for prunekit's {kind} CPU kernels yet (set {AUTO_ENV}=measure to "
                      "measure this machine once)")
    return tables, f"the {kind} table"


def break_even_sparsity(kernel: str, dtype: torch.dtype, rows: int | None = None,
                        kind: str | None = None) -> float | None:
    """The measured break-even sparsity of the CPU ``kernel`` ("linear", "conv1x1", "conv") for
    ``dtype`` weights at ``rows`` rows per call (default :data:`DEFAULT_ROWS`) on the kernel
    ``kind`` (default: the one that runs here); None where the sparse kernel does not beat dense
    torch, there is no kernel, or the kind has no table (:func:`cpu_break_even_tables`). bf16
    linear uses :data:`BREAK_EVEN_SPARSITY_AMX` where prunekit's AMX path runs."""
    rows = DEFAULT_ROWS if rows is None else int(rows)
    kind = cpu_kernel_kind() if kind is None else kind
    tables, _ = cpu_break_even_tables(kind)
    if tables is None:
        return None
    table = tables.get(kernel, {}).get(dtype, ())
    if (kind == "avx512" and auto_mode() == "tables" and dtype in BREAK_EVEN_SPARSITY_AMX.get(kernel, {})
            and _bf16_spmm_on_amx()):
        table = BREAK_EVEN_SPARSITY_AMX[kernel][dtype]
    return _for_rows(table, rows)


def cpu_format_problem(fmt: str, dtype: torch.dtype | None = None, kind: str | None = None) -> str | None:
    """Why the CPU kernels of ``kind`` (default: this machine's) cannot run a ``fmt`` weight, or
    None where they can (or ``fmt`` is "dense"). A module holding such a format would compute
    through an exact expansion on every call; a checkpoint loads it dense instead."""
    if fmt == "dense":
        return None
    kind = cpu_kernel_kind() if kind is None else kind
    if fmt not in CPU_KERNEL_FORMATS.get(kind, ()):
        return f"prunekit has no {kind} CPU kernel for format {fmt!r}"
    return None


def cuda_arch(device: torch.device | None = None) -> str:
    """The key of :data:`BREAK_EVEN_SPARSITY_CUDA` for a CUDA device: "sm" and its compute
    capability ("sm80" for an A100, "sm90" for an H100 or H200)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def _for_rows(table: tuple, rows: int):
    """The entry of a ((max rows, entry), ..., (None, entry)) table for ``rows`` rows per call (the
    first whose max rows holds them; None rows = any more); None if none does."""
    for max_rows, entry in table:
        if max_rows is None or rows <= max_rows:
            return entry
    return None


# An unstructured weight this sparse (by reaches_sparsity) also gets a CSR16 index on CPU (2 bytes per
# nonzero), which SparseLinear runs where it beats the bitmap kernels: the CSR16 GEMV gathers x
# per nonzero where the bitmap GEMV expands every 16 columns; the CSR16 SpMM skips the decode.
CSR16_MIN_SPARSITY = 0.7

# From which sparsity CSR16 beats the bitmap kernels, per x dtype, on CPUs whose bitmap kernels
# are the AVX-512 ones (one expansion instruction per 16 columns, bf16 on AVX-512 BF16 and AMX)
# and on the others (AVX2: a byte shuffle per 8 columns, so CSR16 pays earlier). None: never.
# "avx512 loads": the AVX-512 kernels with the CSR16 GEMV by scalar loads (AMD, where gathers are
# slow; build_info()["cpu_csr16_gemv"]). Against the AVX-512 BF16 bitmap GEMV, bf16 at one row
# pays from 0.9 only (SmolLM2's 210 block linears at one row, 2-core EPYC Zen 4: bitmap 5.5-6.3
# ms at 0.8-0.95; CSR16 7.2 at 0.8, 7.3 at 0.85, 5.7 at 0.9, 5.45 at 0.95). On Zen 5 bf16 CSR16
# pays from 0.9 at 1-2 rows and 0.95 at 3, and at 4 rows (the CSR16 SpMM against the bitmap
# GEMV) fp32 from 0.95 and bf16 not even there (bench/bench_csr16_rows.py;
# bench/results/csr16_rows_cpu.md). Without AMX the bf16 GEMV also runs 5-8 rows (in chunks of
# 4; build_info()["cpu_bf16_gemv_max_rows"]), against which the CSR16 SpMM pays from 0.9 (Zen 5,
# 6-8 rows: 1.4-1.7x slower at 0.7-0.8, 0.8x at 0.9; the Xeon's 4-row figures agree).
_BF16_CHUNKED_GEMV = (8, 0.9)
_CSR16_AVX512 = {torch.float32: ((1, 0.7), (2, 0.8), (4, 0.85), (None, 0.7)),
                 torch.bfloat16: ((1, 0.75), (4, 0.85), _BF16_CHUNKED_GEMV, (None, None))}
CSR16_MIN_SPARSITY_BY_ROWS = {
    "avx512": _CSR16_AVX512,
    "avx512 loads": {torch.float32: ((1, 0.7), (2, 0.8), (3, 0.85), (4, 0.95), (None, 0.7)),
                     torch.bfloat16: ((2, 0.9), (3, 0.95), (4, None), _BF16_CHUNKED_GEMV, (None, None))},
    # AVX2 (AMD Zen 3; bench/bench_csr16_rows.py): 1 row from 0.7, 2-4 rows from 0.8; above 4 rows
    # (the SpMMs) as measured on the Xeon with the AVX2 kernels.
    "avx2": {torch.float32: ((1, 0.7), (4, 0.8), (None, 0.8)),
             torch.bfloat16: ((1, 0.7), (4, 0.8), (None, 0.8))},
    # NEON and scalar: not measured; the AVX2 kernels' thresholds as they were before Zen 3's.
    "other": {torch.float32: ((4, 0.7), (None, 0.8)),
              torch.bfloat16: ((4, 0.7), (None, 0.8))},
}


def csr16_table(x_dtype: torch.dtype) -> tuple:
    """This machine's row of :data:`CSR16_MIN_SPARSITY_BY_ROWS` for ``x_dtype`` (by the selected
    CPU kernels). Where the bitmap kernels widen bf16 x and run their fp32 code, bf16 takes the
    fp32 thresholds: up to 4 rows without AVX-512 BF16, above the bf16 GEMV's rows
    (``cpu_bf16_gemv_max_rows``: 4 with AMX, 8 without) without prunekit's AMX path."""
    from .. import build_info

    info = build_info()
    kind = info["cpu_isa_selected"] if info["cpu_isa_selected"] in ("avx512", "avx2") else "other"
    loads = kind == "avx512" and info["cpu_csr16_gemv"] == "loads"
    tables = CSR16_MIN_SPARSITY_BY_ROWS["avx512 loads" if loads else kind]
    if x_dtype != torch.bfloat16:
        return tables.get(x_dtype, ())
    fp32 = tables[torch.float32]
    gemv_rows = max(info["cpu_bf16_gemv_max_rows"], 4)
    few_rows = [entry for entry in tables[torch.bfloat16] if entry[0] is not None and entry[0] <= gemv_rows]
    if kind == "avx512" and "avx512_bf16" not in info["cpu_features"]:
        few_rows = [entry for entry in fp32 if entry[0] is not None]
    more_rows = (None, None) if info["cpu_bf16_spmm"] == "amx" else fp32[-1]
    return tuple(few_rows) + (more_rows,)


def reaches_sparsity(sparsity: float, threshold: float, cols: int) -> bool:
    """Whether a weight of ``sparsity`` with ``cols`` columns counts as pruned to ``threshold`` for
    the CSR16 thresholds: within one weight per row of it. A row pruned to a nominal sparsity
    keeps a whole number of weights, so it lands just under (Wanda at 90% of 576 columns prunes
    518: 0.8993), and the tables are measured at nominal sparsities."""
    return sparsity > threshold - 1.0 / cols


def csr16_choices(sparsity: float, table: tuple, cols: int) -> tuple:
    """For a weight of ``sparsity`` and ``cols`` columns with a CSR16 index: ((max rows, runs
    CSR16), ...) from a ``table`` of :func:`csr16_table` (what the forward looks up: integers and
    booleans only; thresholds by :func:`reaches_sparsity`)."""
    return tuple((max_rows, threshold is not None and reaches_sparsity(sparsity, threshold, cols))
                 for max_rows, threshold in table)


def csr16_runs(rows: int, choices: tuple) -> bool:
    """Whether the CSR16 kernels run inputs of ``rows`` rows, by :func:`csr16_choices`."""
    return bool(_for_rows(choices, rows))


# "auto" keeps a valid 2:4 weight as 2:4 unless it is much sparser than 50% (the 2:4 layout stores
# two values per group of four, zero padding included): 2:4 while at least this share of the
# stored values is nonzero, the (smaller, faster) unstructured bitmap below it.
SEMI24_MIN_FILL = 0.9


@dataclass(frozen=True)
class WeightStats:
    """What the format choice looks at."""

    rows: int
    cols: int
    dtype: torch.dtype
    device: torch.device
    nonzeros: int
    is_24: bool  # at most two nonzeros in every group of four along the columns
    semi24_problem: str | None  # why the 2:4 layout cannot hold it (alignment, dtype), or None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / (self.rows * self.cols)

    @classmethod
    def of(cls, matrix: torch.Tensor) -> "WeightStats":
        rows, cols = matrix.shape
        nonzeros = int(torch.count_nonzero(matrix))
        is_24 = cols % 4 == 0 and first_dense_group(matrix) is None
        return cls(rows, cols, matrix.dtype, matrix.device, nonzeros, is_24, layout_problem(rows, cols, matrix.dtype))


def _checked_break_even(break_even) -> float:
    threshold = float(break_even)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"choose_format: argument 'break_even' must be in [0, 1], but got {break_even}")
    return threshold


def _checked_rows(rows) -> int:
    if rows is not None and int(rows) < 1:
        raise ValueError(f"choose_format: argument 'rows' must be >= 1, but got {rows}")
    return DEFAULT_ROWS if rows is None else int(rows)


def _holds_24(stats: WeightStats) -> bool:
    """A valid 2:4 pattern the layout holds, not much sparser than 2:4 (:data:`SEMI24_MIN_FILL`)."""
    return (stats.is_24 and stats.semi24_problem is None
            and stats.nonzeros >= SEMI24_MIN_FILL * stats.rows * stats.cols / 2)


def choose_format(stats: WeightStats, kernel: str, *, break_even: float | None = None,
                  rows: int | None = None) -> tuple[str, str]:
    """The format "auto" picks for a weight, and why (a short sentence).

    ``kernel`` is the kernel family that would run it: "linear", "conv1x1" (pointwise conv) or
    "conv" (any other conv: no sparse kernel). When the sparsity reaches the break-even of the
    weight's device (``break_even`` when given; else measured, for the dtype and ``rows``, the rows
    per call, default :data:`DEFAULT_ROWS`): "2:4" for a valid 2:4 pattern the layout holds (and
    not much sparser than 2:4), else "unstructured"; otherwise "dense". On CPU the measured
    break-even is :func:`break_even_sparsity`'s for the kind of CPU kernels that runs here (dense
    where that kind has no table, :func:`cpu_break_even_tables`); on CUDA the GPU architecture's entry of
    :data:`BREAK_EVEN_SPARSITY_CUDA` (dense where the GPU has none: nothing measured there yet);
    on other devices always "dense".
    """
    if stats.device.type == "cuda":
        return _choose_on_cuda(stats, kernel, break_even, rows)
    if stats.device.type != "cpu":
        return "dense", f"no prunekit sparse kernel on {stats.device.type}; dense is fastest"
    dtype = dtype_name(stats.dtype)
    if stats.dtype not in _KERNEL_DTYPES[kernel]:
        return "dense", f"no CPU {kernel} kernel runs {dtype} weights"
    if break_even is not None:
        threshold = _checked_break_even(break_even)
    else:
        rows = _checked_rows(rows)
        tables, source = cpu_break_even_tables()
        if tables is None:
            return "dense", f"{source}; dense"
        threshold = break_even_sparsity(kernel, stats.dtype, rows)
        if threshold is None:
            return "dense", (f"the CPU {kernel} kernel does not beat dense torch on {dtype} weights at "
                             f"{rows} rows per call ({source})")
    versus = f"break-even {threshold:.2f} of the CPU {kernel} kernel ({dtype})"
    if stats.sparsity < threshold:
        return "dense", f"sparsity {stats.sparsity:.3f} < {versus}"
    if _holds_24(stats) and cpu_format_problem("2:4") is None:
        return "2:4", "valid 2:4 pattern (bitmap kernel on CPU, CUTLASS layout on disk and on CUDA)"
    if cpu_format_problem("unstructured") is not None:
        return "dense", cpu_format_problem("unstructured")
    return "unstructured", f"sparsity {stats.sparsity:.3f} >= {versus}"


def _choose_on_cuda(stats: WeightStats, kernel: str, break_even: float | None, rows: int | None) -> tuple[str, str]:
    dtype = dtype_name(stats.dtype)
    if kernel == "conv":
        return "dense", "no prunekit CUDA kernel for convolutions other than 1x1"
    if stats.dtype not in _CUDA_KERNEL_DTYPES:
        return "dense", f"no prunekit CUDA kernel runs {dtype} weights"
    semi24 = kernel == "linear" and _holds_24(stats)
    if break_even is not None:
        threshold = _checked_break_even(break_even)
        if stats.sparsity < threshold:
            return "dense", f"sparsity {stats.sparsity:.3f} < the given break-even {threshold:.2f}"
        if semi24:
            return "2:4", "valid 2:4 pattern (the given break-even)"
        return "unstructured", f"sparsity {stats.sparsity:.3f} >= the given break-even {threshold:.2f}"
    rows = _checked_rows(rows)
    arch = cuda_arch(stats.device)
    tables = BREAK_EVEN_SPARSITY_CUDA.get(arch) or {}
    if not tables:
        return "dense", (f"no measurement of prunekit's CUDA kernels on this GPU ({arch}) yet "
                         "(bench/bench_break_even_cuda.py measures it); dense")
    where = f"on {arch} ({dtype}, {rows} rows per call)"
    if semi24:
        threshold = _for_rows(tables.get("linear24", {}).get(stats.dtype, ()), rows)
        if threshold is not None and stats.sparsity >= threshold:
            return "2:4", f"valid 2:4 pattern; the 2:4 CUDA kernel beats cuBLAS {where}"
    threshold = _for_rows(tables.get(kernel, {}).get(stats.dtype, ()), rows)
    if threshold is None:
        return "dense", f"prunekit's CUDA {kernel} kernel does not beat cuBLAS {where}"
    versus = f"break-even {threshold:.2f} of the CUDA {kernel} kernel {where}"
    if stats.sparsity < threshold:
        return "dense", f"sparsity {stats.sparsity:.3f} < {versus}"
    return "unstructured", f"sparsity {stats.sparsity:.3f} >= {versus}"
