"""Sparse linear on CPU vs dense F.linear and torch's CSR path, side by side in one process.

For each named shape, batch, dtype and pattern (unstructured 50%/90%, 2:4): time of
prunekit.ops.sparse_linear, dense F.linear of the same dtype, and torch.sparse.mm on a CSR
weight (fp32), the speed-ups, effective (dense-equivalent) and actual GFLOP/s, and at batch 1
the weight bandwidth in GB/s (bytes of the compressed weight per call).

    python bench/bench_linear.py [--quick] [--threads N]
"""

import argparse
import warnings

import torch
import torch.nn.functional as F

from _common import time_ms, write_results
from shapes import LLAMA_7B

from prunekit import ops
from prunekit.formats import BitmapWeight, from_semi24

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def make_weight(rows, cols, pattern, dtype, generator):
    weight = torch.randn(rows, cols, generator=generator)
    if pattern == "2:4":
        dense = (weight * ops.nm_mask(weight.abs(), 2, 4)).to(dtype)
        return dense, from_semi24(*ops.compress_24(dense))
    sparsity = float(pattern.rstrip("%")) / 100
    weight[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    dense = weight.to(dtype)
    return dense, BitmapWeight.from_dense(dense)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, batches 1 and 16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = {"small": (512, 1024)} if args.quick else LLAMA_7B
    batches = (1, 16) if args.quick else (1, 16, 128)
    min_run_time = 0.05 if args.quick else 0.4
    generator = torch.Generator().manual_seed(0)
    rows_out = []
    for name, (out_features, in_features) in shapes.items():
        for dtype in (torch.float32, torch.bfloat16):
            for pattern in ("50%", "90%", "2:4"):
                dense, weight = make_weight(out_features, in_features, pattern, dtype, generator)
                csr = dense.float().to_sparse_csr() if dtype == torch.float32 and pattern != "2:4" else None
                for batch in batches:
                    x = torch.randn(batch, in_features, generator=generator).to(dtype)
                    sparse_ms = time_ms(lambda: ops.sparse_linear(x, weight.values, weight.bitmap, weight.row_offsets, in_features), min_run_time)
                    dense_ms = time_ms(lambda: F.linear(x, dense), min_run_time)
                    csr_ms = time_ms(lambda: torch.sparse.mm(csr, x.T), min_run_time) if csr is not None else None
                    flops = 2 * batch * out_features * in_features
                    nnz = weight.values.numel()
                    row = {
                        "shape": name, "dtype": str(dtype).removeprefix("torch."), "pattern": pattern, "batch": batch,
                        "prunekit_ms": sparse_ms, "dense_ms": dense_ms, "csr_ms": csr_ms,
                        "speedup_vs_dense": dense_ms / sparse_ms,
                        "speedup_vs_csr": csr_ms / sparse_ms if csr_ms else None,
                        "effective_gflops": flops / sparse_ms / 1e6,
                        "actual_gflops": 2 * batch * nnz / sparse_ms / 1e6,
                        "weight_GB_s": weight.nbytes() / sparse_ms / 1e6 if batch == 1 else None,
                    }
                    rows_out.append(row)
                    csr_text = f", CSR {csr_ms:7.3f} ms ({csr_ms / sparse_ms:4.2f}x)" if csr_ms else ""
                    print(f"{name:>18} {row['dtype']:>8} {pattern:>4} b{batch:<4}: prunekit {sparse_ms:7.3f} ms, "
                          f"dense {dense_ms:7.3f} ms ({dense_ms / sparse_ms:5.2f}x){csr_text}")
    suffix = "_quick" if args.quick else ""
    paths = write_results(
        f"linear_cpu{suffix}", rows_out,
        ["shape", "dtype", "pattern", "batch", "prunekit_ms", "dense_ms", "csr_ms", "speedup_vs_dense",
         "speedup_vs_csr", "effective_gflops", "actual_gflops", "weight_GB_s"],
        "Sparse linear vs dense F.linear and torch CSR (CPU)",
    )
    print("wrote", *paths)


if __name__ == "__main__":
    main()
