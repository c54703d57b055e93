"""SparseGPT engine vs the pure-PyTorch reference loop, side by side in one process.

For each layer shape and pattern: the whole solve (factorisation included) with prunekit and
with prunekit.ops._reference.sparsegpt (the public reference algorithm's per-column loop), the
ratio, the relative reconstruction error of both, where prunekit's time goes (factorisation vs
column updates), and the update phase's FLOP rate against this machine's dense fp32 GEMM rate.
The logic lives in prunekit.app.benchmarks.sparsegpt (also run by `prunekit bench`).

    python bench/bench_sparsegpt.py [--quick] [--shapes 1024 4096] [--tokens 2048] [--repeats 2]
"""

from _common import main


def arguments(parser):
    parser.add_argument("--shapes", type=int, nargs="+", default=[1024, 4096], help="square layer sizes")
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    return ["shapes", "tokens", "repeats"]


if __name__ == "__main__":
    main("sparsegpt", __doc__, arguments)
