"""Sparse 1x1 convolution on CPU vs F.conv2d, side by side in one process (MobileNet-v1
pointwise layers, batch 1, fp32), at 50% and 90% sparsity, with effective and actual GFLOP/s.

    python bench/bench_conv.py [--quick] [--threads N]
"""

import argparse

import torch
import torch.nn.functional as F

from _common import time_ms, write_results
from shapes import MOBILENET_V1_POINTWISE

from prunekit import ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two layers, short timings")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers = dict(list(MOBILENET_V1_POINTWISE.items())[1:4:2]) if args.quick else MOBILENET_V1_POINTWISE
    min_run_time = 0.05 if args.quick else 0.4
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for name, (out_channels, in_channels, side) in layers.items():
        x = torch.randn(1, in_channels, side, side, generator=generator)
        for sparsity in (0.5, 0.9):
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
            print(f"{name:>18} {row['input']:>12} -> {out_channels:>4} @ {sparsity:.0%}: prunekit {sparse_ms:7.3f} ms, "
                  f"conv2d {dense_ms:7.3f} ms ({dense_ms / sparse_ms:5.2f}x)")
    suffix = "_quick" if args.quick else ""
    paths = write_results(
        f"conv1x1_cpu{suffix}", rows_out,
        ["layer", "input", "out_channels", "sparsity", "prunekit_ms", "conv2d_ms", "speedup", "effective_gflops", "actual_gflops"],
        "Sparse 1x1 convolution (bias + ReLU fused) vs F.conv2d + relu (CPU)",
    )
    print("wrote", *paths)


if __name__ == "__main__":
    main()
