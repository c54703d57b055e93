"""prunekit's unstructured sparse linear on CUDA (the tiled bitmap kernels) against cuBLAS dense,
side by side on one GPU: the LLM shapes at 50/70/90% sparsity, bf16, batch 1 to 2048, each of the
kernels ("simt" and "mma" decode kernels up to batch 16, the pipelined "gemm") and what "auto"
picks. GPU time per call from CUDA graphs with weights read from HBM (cuda_timing.py); also the
weight bandwidth the sparse kernel reaches (bytes of its weight per second)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import progress_bar, summarize_speedups
from .cuda_timing import copy_count, gpu_arch, graph_us
from .common import cuda_available as available  # noqa: F401  (the families' availability probe)

NAME = "sparse_cuda"
TITLE = "Unstructured sparse linear on CUDA (tiled bitmap) vs cuBLAS dense"
COLUMNS = ["gpu", "arch", "shape", "dtype", "sparsity", "batch", "kernel", "dense_us", "sparse_us", "speedup",
           "weight_gb_s"]
QUICK = "one 4096x4096 layer at 90%, batch 1 and 16, auto only"
SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096)}
SPARSITIES = (0.5, 0.7, 0.9)
BATCHES = (1, 2, 4, 8, 16, 128, 2048)
DECODE_KERNELS = ("simt", "mma")  # batch <= 16
MAX_DECODE_BATCH = 16


def _weight(rows: int, cols: int, sparsity: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    weight = torch.randn(rows, cols, device="cuda", generator=generator)
    weight[torch.rand(rows, cols, device="cuda", generator=generator) < sparsity] = 0
    return weight.to(dtype)


def _tiled_copies(weight: torch.Tensor) -> list:
    from prunekit.formats.bitmap_tiles import TiledBitmapWeight

    first = TiledBitmapWeight.from_dense(weight)
    copies = [first]
    for _ in range(copy_count(first.nbytes()) - 1):
        copies.append(type(first)(first.values.clone(), first.bitmap.clone(), first.offsets.clone(), first.rows,
                                  first.cols))
    return copies


def kernels_for(batch: int, quick: bool) -> tuple[str, ...]:
    if quick:
        return ("auto",)
    return ("auto", *(DECODE_KERNELS if batch <= MAX_DECODE_BATCH else ()), "gemm")


def run(quick: bool = False, *, progress: bool = False, on_row=None, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """One row per (shape, sparsity, batch, kernel); [] when the CUDA kernels cannot run here."""
    ok, _ = available()
    if not ok:
        return []
    from prunekit import ops

    shapes = {"4096x4096": SHAPES["4096x4096"]} if quick else SHAPES
    sparsities = (0.9,) if quick else SPARSITIES
    batches = (1, 16) if quick else BATCHES
    gpu, arch = torch.cuda.get_device_name(), gpu_arch()
    cases = [(s, p, b) for s in shapes for p in sparsities for b in batches]
    rows = []
    with progress_bar(len(cases), NAME, progress) as bar:
        for name, (out_features, in_features) in shapes.items():
            for sparsity in sparsities:
                weight = _weight(out_features, in_features, sparsity, dtype, seed=out_features)
                dense = [weight.clone() for _ in range(copy_count(weight.numel() * weight.element_size()))]
                tiled = _tiled_copies(weight)
                for batch in batches:
                    x = torch.randn(batch, in_features, dtype=dtype, device="cuda")
                    dense_us = graph_us([lambda w=w: F.linear(x, w) for w in dense])
                    for kernel in kernels_for(batch, quick):
                        calls = [lambda t=t, k=kernel: ops.sparse_linear_tiles(
                            x, t.values, t.bitmap, t.offsets, out_features, in_features, kernel=k) for t in tiled]
                        sparse_us = graph_us(calls)
                        row = {"gpu": gpu, "arch": arch, "shape": name, "dtype": str(dtype).replace("torch.", ""),
                               "sparsity": sparsity, "batch": batch, "kernel": kernel, "dense_us": dense_us,
                               "sparse_us": sparse_us, "speedup": dense_us / sparse_us,
                               "weight_gb_s": tiled[0].nbytes() / (sparse_us * 1e3)}
                        rows.append(row)
                        if on_row is not None:
                            on_row(row)
                    bar.update(1)
                del dense, tiled
                torch.cuda.empty_cache()
    return rows


def describe(row: dict) -> str:
    return (f"{row['shape']} {row['dtype']} s={row['sparsity']} batch={row['batch']} {row['kernel']}: "
            f"{row['sparse_us']:.1f} us vs cuBLAS {row['dense_us']:.1f} us = {row['speedup']:.2f}x "
            f"({row['weight_gb_s']:.0f} GB/s of weight)")


def summarize(rows: list[dict]) -> list[dict]:
    return summarize_speedups(NAME, rows, ["sparsity", "batch", "kernel"], "speedup", "cuBLAS dense (same dtype)")
