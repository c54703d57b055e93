"""Sparse linear on CPU vs dense F.linear and torch's CSR path, side by side in one process.

For each named shape, batch, dtype and pattern (unstructured 50%/90%, 2:4): time of the kernel
SparseLinear runs (``kernel``: prunekit.ops.sparse_linear_csr16 where SparseLinear runs it for the
pattern's sparsity, else prunekit.ops.sparse_linear's bitmap kernels), dense F.linear of the same
dtype, and torch.sparse.mm on a CSR weight (fp32), the speed-ups, effective (dense-equivalent)
and actual GFLOP/s, and at batch 1 the weight bandwidth in GB/s (bytes of the compressed weight
per call).

``weights="warm"`` (the default) gives every call of a contestant the same copy of its weight,
which stays in the caches as far as they and the machine's other load leave it room;
``weights="cold"`` gives every call another copy, the copies together larger than the last-level
cache (:func:`~prunekit.app.benchmarks.common.cold_copies`), so that batch 1 streams its weight from
memory, as decoding a model larger than the caches does. How much of a warm weight stays cached
depends on the other load on the machine.

prunekit's compressed weights are placed as SparseLinear's own are (2 MiB aligned, on huge pages
as far as the OS allows: :mod:`prunekit._huge_pages`); torch's dense and CSR weights as torch
allocates them.
"""

from __future__ import annotations

import itertools
import warnings

import torch
import torch.nn.functional as F

from prunekit._huge_pages import aligned_copy
from prunekit._names import dtype_name
from .common import cold_copies, compare_ms, progress_bar, summarize_speedups, time_ms
from .shapes import LLAMA_7B, SMALL_LINEAR

QUICK = "one small shape, batches 1 and 16, short timings"
NAME = "linear_cpu"
TITLE = "Sparse linear vs dense F.linear and torch CSR (CPU)"
COLUMNS = ["shape", "dtype", "pattern", "batch", "weights", "kernel", "prunekit_ms", "dense_ms", "csr_ms",
           "speedup_vs_dense", "speedup_vs_csr", "effective_gflops", "actual_gflops", "weight_GB_s"]
PATTERNS = ("50%", "90%", "2:4")
DTYPES = (torch.float32, torch.bfloat16)
WEIGHTS = ("cold", "warm")


def pattern_sparsity(pattern: str) -> float:
    """"50%" -> 0.5; "n:m" -> 1 - n/m."""
    if ":" in pattern:
        n, m = (int(v) for v in pattern.split(":"))
        return 1 - n / m
    return float(pattern.rstrip("%")) / 100


def make_weight(rows: int, cols: int, pattern: str, dtype: torch.dtype, generator: torch.Generator):
    """(dense, BitmapWeight) of a random weight pruned to ``pattern`` ("50%", "2:4", ...)."""
    from prunekit import ops
    from prunekit.formats import BitmapWeight, from_semi24

    weight = torch.randn(rows, cols, generator=generator)
    if pattern == "2:4":
        dense = (weight * ops.nm_mask(weight.abs(), 2, 4)).to(dtype)
        return dense, from_semi24(*ops.compress_24(dense))
    weight[torch.rand(rows, cols, generator=generator) < pattern_sparsity(pattern)] = 0
    dense = weight.to(dtype)
    return dense, BitmapWeight.from_dense(dense)


def kernel_copy(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A copy of a compressed weight's tensors placed as SparseLinear's own are (2 MiB aligned, on
    huge pages as far as the OS allows: :mod:`prunekit._huge_pages`)."""
    return tuple(aligned_copy(t) for t in tensors)


def run(quick: bool = False, *, shapes: dict | None = None, batches=None, patterns=PATTERNS, dtypes=DTYPES,
        min_run_time: float | None = None, csr: bool = True, rounds: int = 1, weights: str = "warm",
        progress: bool = False, on_row=None) -> list[dict]:
    """One row per (shape, dtype, pattern, batch). ``quick``: one small shape, batches 1 and 16,
    short timings. ``csr=False`` leaves out torch's CSR baseline. ``rounds`` > 1 times prunekit
    and the baselines alternately in that many rounds and keeps each one's best
    (:func:`~prunekit.app.benchmarks.common.compare_ms`, for busy machines). ``weights``: "warm"
    (one copy of each weight, reused) or "cold" (every call reads another copy, from memory)."""
    if weights not in WEIGHTS:
        raise ValueError(f"bench linear: weights must be one of {', '.join(WEIGHTS)}, but got {weights!r}")
    from prunekit import ops
    from prunekit.formats import Csr16Weight
    from prunekit.nn.auto import CSR16_MIN_SPARSITY, csr16_choices, csr16_runs, csr16_table, reaches_sparsity

    def weight_source(original, clone, nbytes: int):
        """What each call reads its weight from: one copy (warm) or the next of its cold copies."""
        if weights == "warm":
            one = clone(original)
            return lambda: one
        return cold_copies(lambda: clone(original), nbytes)

    shapes = shapes or (SMALL_LINEAR if quick else LLAMA_7B)
    batches = batches or ((1, 16) if quick else (1, 16, 128))
    min_run_time = min_run_time or (0.05 if quick else 0.4)
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    bar = progress_bar(len(shapes) * len(dtypes) * len(patterns) * len(batches), "bench linear", progress)
    with warnings.catch_warnings(), bar:
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for (name, (out_features, in_features)), dtype, pattern in itertools.product(shapes.items(), dtypes, patterns):
            dense, weight = make_weight(out_features, in_features, pattern, dtype, generator)
            csr16 = (Csr16Weight.from_bitmap(weight) if pattern != "2:4" and reaches_sparsity(
                pattern_sparsity(pattern), CSR16_MIN_SPARSITY, in_features) else None)
            csr_weight = dense.float().to_sparse_csr() if csr and dtype == torch.float32 and pattern != "2:4" else None
            # The kernel SparseLinear runs for this weight at each batch.
            sparsity = 1.0 - weight.values.numel() / (out_features * in_features)
            choices = csr16_choices(sparsity, csr16_table(dtype), in_features)
            kernels = {batch: "csr16" if csr16 is not None and csr16_runs(batch, choices) else "bitmap"
                       for batch in batches}
            sources = {}  # the last case's copies go first
            sources["dense"] = weight_source(dense, torch.Tensor.clone, dense.nbytes)
            if "csr16" in kernels.values():
                sources["csr16"] = weight_source((csr16.values, csr16.col_indices, csr16.row_offsets), kernel_copy,
                                                 csr16.nbytes())
            if "bitmap" in kernels.values():
                sources["bitmap"] = weight_source((weight.values, weight.bitmap, weight.row_offsets), kernel_copy,
                                                  weight.nbytes())
            if csr_weight is not None:
                sources["csr"] = weight_source(csr_weight, torch.Tensor.clone, sum(
                    t.nbytes for t in (csr_weight.values(), csr_weight.col_indices(), csr_weight.crow_indices())))
            for batch in batches:
                x = torch.randn(batch, in_features, generator=generator).to(dtype)
                kernel = kernels[batch]
                if kernel == "csr16":
                    sparse = lambda: ops.sparse_linear_csr16(x, *sources["csr16"](), in_features)
                else:
                    sparse = lambda: ops.sparse_linear(x, *sources["bitmap"](), in_features)
                fns = {"sparse": sparse, "dense": lambda: F.linear(x, sources["dense"]())}
                if csr_weight is not None:
                    fns["csr"] = lambda: torch.sparse.mm(sources["csr"](), x.T)
                if rounds > 1:
                    times = compare_ms(fns, min_run_time, rounds)
                else:
                    times = {name: time_ms(fn, min_run_time) for name, fn in fns.items()}
                sparse_ms, dense_ms, csr_ms = times["sparse"], times["dense"], times.get("csr")
                flops = 2 * batch * out_features * in_features
                nnz = weight.values.numel()
                row = {
                    "shape": name, "dtype": dtype_name(dtype), "pattern": pattern,
                    "sparsity": pattern_sparsity(pattern), "batch": batch, "weights": weights, "kernel": kernel,
                    "prunekit_ms": sparse_ms, "dense_ms": dense_ms, "csr_ms": csr_ms,
                    "speedup_vs_dense": dense_ms / sparse_ms,
                    "speedup_vs_csr": csr_ms / sparse_ms if csr_ms else None,
                    "effective_gflops": flops / sparse_ms / 1e6,
                    "actual_gflops": 2 * batch * nnz / sparse_ms / 1e6,
                    "weight_GB_s": ((csr16 if kernel == "csr16" else weight).nbytes() / sparse_ms / 1e6
                                    if batch == 1 else None),
                }
                rows_out.append(row)
                bar.update()
                if on_row is not None:
                    on_row(row)
    return rows_out


def describe(row: dict) -> str:
    csr = f", CSR {row['csr_ms']:7.3f} ms ({row['speedup_vs_csr']:4.2f}x)" if row["csr_ms"] else ""
    return (f"{row['shape']:>18} {row['dtype']:>8} {row['pattern']:>4} b{row['batch']:<4}: prunekit "
            f"{row['prunekit_ms']:7.3f} ms, dense {row['dense_ms']:7.3f} ms ({row['speedup_vs_dense']:5.2f}x){csr}")


def summarize(rows: list[dict]) -> list[dict]:
    """Speed-up over dense F.linear per dtype, pattern and batch (geometric mean over shapes)."""
    return summarize_speedups("linear", rows, ["dtype", "pattern", "batch"], "speedup_vs_dense", "F.linear")
