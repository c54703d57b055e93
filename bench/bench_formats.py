"""2:4 conversion and N:M mask ops against torch's own paths, side by side in one process.

Baselines: torch.sparse._semi_structured_conversions (the CUTLASS-layout converters that
to_sparse_semi_structured uses on CPU) and a topk-based N:M mask in plain torch. Reports the
speed-up ratio and the effective bandwidth (bytes of the dense matrix per second).

    python bench/bench_formats.py [--quick]
"""

import argparse

import torch
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from _common import time_ms, write_results
from shapes import LLAMA_7B

from prunekit import ops


def torch_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The usual plain-torch N:M mask (topk per group; tie order unspecified)."""
    groups = scores.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(scores.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, short timings")
    args = parser.parse_args()
    shapes = {"small": (512, 1024)} if args.quick else LLAMA_7B
    min_run_time = 0.05 if args.quick else 0.5
    rows = []
    for name, (out_features, in_features) in shapes.items():
        for dtype in (torch.float16, torch.bfloat16, torch.int8):
            weight = (torch.randn(out_features, in_features) * 8).to(dtype)
            scores = weight.abs().float()
            dense = weight * ops.nm_mask(scores, 2, 4)
            values, meta = ops.compress_24(dense)
            mbytes = dense.numel() * dense.element_size() / 1e6
            cases = {
                "nm_mask(2:4)": (lambda: ops.nm_mask(scores, 2, 4), lambda: torch_nm_mask(scores, 2, 4)),
                "compress_24": (
                    lambda: ops.compress_24(dense),
                    lambda: sparse_semi_structured_from_dense_cutlass(dense),
                ),
                "decompress_24": (
                    lambda: ops.decompress_24(values, meta),
                    lambda: sparse_semi_structured_to_dense_cutlass(values, meta),
                ),
            }
            for op, (ours, theirs) in cases.items():
                if op == "nm_mask(2:4)" and dtype != torch.float16:
                    continue  # the mask works on fp32 scores: once per shape is enough
                ours_ms = time_ms(ours, min_run_time)
                torch_ms = time_ms(theirs, min_run_time)
                rows.append({
                    "shape": name, "op": op, "dtype": str(dtype).removeprefix("torch."),
                    "prunekit_ms": ours_ms, "torch_ms": torch_ms, "speedup": torch_ms / ours_ms,
                    "prunekit_GB_s": mbytes / ours_ms,
                })
                print(f"{name:>18} {op:>14} {rows[-1]['dtype']:>9}: prunekit {ours_ms:8.2f} ms, "
                      f"torch {torch_ms:8.2f} ms, speed-up {torch_ms / ours_ms:5.1f}x")
    suffix = "_quick" if args.quick else ""
    paths = write_results(
        f"formats_cpu{suffix}", rows,
        ["shape", "op", "dtype", "prunekit_ms", "torch_ms", "speedup", "prunekit_GB_s"],
        "2:4 conversions and N:M masks vs torch (CPU)",
    )
    print("wrote", *paths)


if __name__ == "__main__":
    main()
