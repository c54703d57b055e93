"""SparseGPT on CUDA vs the reference SparseGPT loop (plain torch, as the paper's code) on the same
GPU, side by side: whole solves at 4096^2 and 8192^2, unstructured 50% and 2:4, times, their ratio
and the reconstruction errors of both. The logic lives in prunekit.app.benchmarks.sparsegpt_cuda
(also run by `prunekit bench` and scripts/gpu_check.sh); results go to bench/results with the GPU
name and commit.

    python bench/bench_sparsegpt_cuda.py [--quick] [--shapes 4096 8192] [--tokens 2048] [--repeats 2]
"""

from _common import main


def arguments(parser):
    parser.add_argument("--shapes", type=int, nargs="+", default=[4096, 8192], help="square layer sizes")
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    return ["shapes", "tokens", "repeats"]


if __name__ == "__main__":
    main("sparsegpt_cuda", __doc__, arguments)
