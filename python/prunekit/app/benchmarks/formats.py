"""2:4 conversion and N:M mask ops against torch's own paths, side by side in one process.

Baselines: torch.sparse._semi_structured_conversions (the CUTLASS-layout converters that
to_sparse_semi_structured uses on CPU) and a topk-based N:M mask in plain torch. Reports the
speed-up ratio and the effective bandwidth (bytes of the dense matrix per second).
"""

from __future__ import annotations

import itertools

import torch

from prunekit._names import dtype_name
from .common import progress_bar, summarize_speedups, time_ms
from .shapes import LLAMA_7B, SMALL_LINEAR

QUICK = "one small shape, short timings"
NAME = "formats_cpu"
TITLE = "2:4 conversions and N:M masks vs torch (CPU)"
COLUMNS = ["shape", "op", "dtype", "prunekit_ms", "torch_ms", "speedup", "prunekit_GB_s"]
DTYPES = (torch.float16, torch.bfloat16, torch.int8)


def torch_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The usual plain-torch N:M mask (topk per group; tie order unspecified)."""
    groups = scores.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(scores.shape)


def format_cases(weight: torch.Tensor) -> dict:
    """{op: (prunekit fn, torch fn)} for one weight (on any device the ops support)."""
    from torch.sparse._semi_structured_conversions import (sparse_semi_structured_from_dense_cutlass,
                                                           sparse_semi_structured_to_dense_cutlass)

    from prunekit import ops

    scores = weight.abs().float()
    dense = weight * ops.nm_mask(scores, 2, 4)
    values, meta = ops.compress_24(dense)
    return {
        "nm_mask(2:4)": (lambda: ops.nm_mask(scores, 2, 4), lambda: torch_nm_mask(scores, 2, 4)),
        "compress_24": (lambda: ops.compress_24(dense), lambda: sparse_semi_structured_from_dense_cutlass(dense)),
        "decompress_24": (lambda: ops.decompress_24(values, meta),
                          lambda: sparse_semi_structured_to_dense_cutlass(values, meta)),
    }


def run(quick: bool = False, *, shapes: dict | None = None, device: str = "cpu", min_run_time: float | None = None,
        progress: bool = False, on_row=None) -> list[dict]:
    """One row per (shape, op, dtype); the mask op once per shape (it works on fp32 scores).
    ``quick``: one small shape, short timings."""
    shapes = shapes or (SMALL_LINEAR if quick else LLAMA_7B)
    min_run_time = min_run_time or (0.05 if quick else 0.5)
    rows = []
    with progress_bar(len(shapes) * len(DTYPES), f"bench formats ({device})", progress) as bar:
        for (name, (out_features, in_features)), dtype in itertools.product(shapes.items(), DTYPES):
            weight = (torch.randn(out_features, in_features) * 8).to(dtype).to(device)
            mbytes = weight.numel() * weight.element_size() / 1e6
            for op, (ours, theirs) in format_cases(weight).items():
                if op == "nm_mask(2:4)" and dtype != DTYPES[0]:
                    continue  # the mask works on fp32 scores: once per shape is enough
                ours_ms = time_ms(ours, min_run_time)
                torch_ms = time_ms(theirs, min_run_time)
                rows.append({
                    "shape": name, "op": op, "dtype": dtype_name(dtype),
                    "prunekit_ms": ours_ms, "torch_ms": torch_ms, "speedup": torch_ms / ours_ms,
                    "prunekit_GB_s": mbytes / ours_ms,
                })
                if on_row is not None:
                    on_row(rows[-1])
            bar.update()
    return rows


def describe(row: dict) -> str:
    return (f"{row['shape']:>18} {row['op']:>14} {row['dtype']:>9}: prunekit {row['prunekit_ms']:8.2f} ms, "
            f"torch {row['torch_ms']:8.2f} ms, speed-up {row['speedup']:5.1f}x")


def summarize(rows: list[dict]) -> list[dict]:
    """Speed-up over torch's converters (and a topk mask) per op (geometric mean over shapes, dtypes)."""
    return summarize_speedups("formats", rows, ["op"], "speedup", "torch converters")
