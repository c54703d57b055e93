"""prunekit's unstructured sparse linear on CUDA (tiled bitmap kernels) vs cuBLAS dense: LLM shapes at
50/70/90% sparsity, bf16, batch 1 to 2048, every kernel and "auto", GPU time from CUDA graphs with
weights read from HBM. The logic lives in prunekit.app.benchmarks.sparse_cuda.

    python bench/bench_sparse_cuda.py [--quick] [--dtype bfloat16|float16]
    # writes bench/results/sparse_cuda_<arch>[_quick].{json,md} (arch: sm80, sm90, ...)
"""

import argparse

import torch
from _common import RESULTS_DIR

from prunekit.app.benchmarks import sparse_cuda
from prunekit.app.benchmarks.common import markdown_table, write_results
from prunekit.app.benchmarks.cuda_timing import gpu_arch

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=sparse_cuda.QUICK)
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    args = parser.parse_args()
    ok, why = sparse_cuda.available()
    if not ok:
        raise SystemExit(f"bench_sparse_cuda: {why}")
    dtype = getattr(torch, args.dtype)
    rows = sparse_cuda.run(args.quick, on_row=lambda row: print(sparse_cuda.describe(row), flush=True), dtype=dtype)
    suffix = "" if dtype == torch.bfloat16 else f"_{args.dtype}"
    name = f"{sparse_cuda.NAME}_{gpu_arch()}{suffix}{'_quick' if args.quick else ''}"
    json_path, md_path = write_results(RESULTS_DIR, name, rows, sparse_cuda.COLUMNS, sparse_cuda.TITLE)
    summary = sparse_cuda.summarize(rows)
    md_path.write_text(md_path.read_text() + "\n## Speed-up over cuBLAS (geometric mean over shapes)\n\n"
                       + markdown_table(summary, ["case", "speedup", "min", "max", "n"]) + "\n")
    print("wrote", json_path, md_path)
