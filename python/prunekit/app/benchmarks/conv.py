"""Sparse 1x1 convolution on CPU vs F.conv2d, side by side in one process (MobileNet-v1
pointwise layers, batch 1, fp32), at 50% and 90% sparsity, with effective and actual GFLOP/s."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .common import progress_bar, summarize_speedups, time_ms
from .shapes import MOBILENET_V1_POINTWISE, MOBILENET_V1_POINTWISE_QUICK

QUICK = "two layers, short timings"
NAME = "conv1x1_cpu"
TITLE = "Sparse 1x1 convolution (bias + ReLU fused) vs F.conv2d + relu (CPU)"
COLUMNS = ["layer", "input", "out_channels", "sparsity", "prunekit_ms", "conv2d_ms", "speedup", "effective_gflops",
           "actual_gflops"]
SPARSITIES = (0.5, 0.9)


def run(quick: bool = False, *, layers: dict | None = None, sparsities=SPARSITIES, min_run_time: float | None = None,
        progress: bool = False, on_row=None) -> list[dict]:
    """One row per (layer, sparsity). ``quick``: two layers, short timings."""
    from prunekit import ops

    layers = layers or (MOBILENET_V1_POINTWISE_QUICK if quick else MOBILENET_V1_POINTWISE)
    min_run_time = min_run_time or (0.05 if quick else 0.4)
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    with progress_bar(len(layers) * len(sparsities), "bench conv", progress) as bar:
        x = None
        for (name, (out_channels, in_channels, side)), sparsity in itertools.product(layers.items(), sparsities):
            if sparsity == sparsities[0]:
                x = torch.randn(1, in_channels, side, side, generator=generator)
            weight = torch.randn(out_channels, in_channels, generator=generator)
            weight[torch.rand(out_channels, in_channels, generator=generator) < sparsity] = 0
            bias = torch.randn(out_channels, generator=generator)
            values, bitmap, row_offsets = ops.compress_bitmap(weight)
            weight4d = weight[:, :, None, None].contiguous()
            sparse_ms = time_ms(lambda: ops.sparse_conv1x1(x, values, bitmap, row_offsets, bias, 1), min_run_time)
            dense_ms = time_ms(lambda: F.relu(F.conv2d(x, weight4d, bias)), min_run_time)
            flops = 2 * out_channels * in_channels * side * side
            row = {
                "layer": name, "input": f"{in_channels}x{side}x{side}", "out_channels": out_channels,
                "sparsity": sparsity, "prunekit_ms": sparse_ms, "conv2d_ms": dense_ms,
                "speedup": dense_ms / sparse_ms, "effective_gflops": flops / sparse_ms / 1e6,
                "actual_gflops": 2 * values.numel() * side * side / sparse_ms / 1e6,
            }
            rows_out.append(row)
            bar.update()
            if on_row is not None:
                on_row(row)
    return rows_out


def describe(row: dict) -> str:
    return (f"{row['layer']:>18} {row['input']:>12} -> {row['out_channels']:>4} @ {row['sparsity']:.0%}: prunekit "
            f"{row['prunekit_ms']:7.3f} ms, conv2d {row['conv2d_ms']:7.3f} ms ({row['speedup']:5.2f}x)")


def summarize(rows: list[dict]) -> list[dict]:
    """Speed-up over F.conv2d + relu per sparsity (geometric mean over layers)."""
    return summarize_speedups("conv1x1", rows, ["sparsity"], "speedup", "F.conv2d+relu")
