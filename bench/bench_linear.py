"""Sparse linear on CPU vs dense F.linear and torch's CSR path, side by side in one process.

For each named shape, batch, dtype and pattern (unstructured 50%/90%, 2:4): time of
prunekit.ops.sparse_linear, dense F.linear of the same dtype, and torch.sparse.mm on a CSR
weight (fp32), the speed-ups, effective (dense-equivalent) and actual GFLOP/s, and at batch 1
the weight bandwidth in GB/s (bytes of the compressed weight per call). The logic lives in
prunekit.benchmarks.linear (also run by `prunekit bench`).

    python bench/bench_linear.py [--quick] [--threads N] [--rounds R] [--weights cold|warm]
    # writes bench/results/linear_cpu[_warm][_quick].{json,md}

--rounds R times prunekit and the baselines alternately R times and keeps each one's best (on a
shared, noisy machine the recorded tables use R = 2). --weights: cold (default) gives every call
another copy of its weight, the copies together larger than the last-level cache, so that batch 1
reads its weight from memory as decoding does; warm reuses one copy, which stays in the cache as
far as the machine's other load leaves it room.
"""

from _common import main



def arguments(parser) -> list[str]:
    parser.add_argument("--rounds", type=int, default=1, help="alternating timing rounds, best kept")
    parser.add_argument("--weights", choices=("cold", "warm"), default="cold",
                        help="a copy of the weight per call, from memory (cold), or one copy reused (warm)")
    return ["rounds", "weights"]


if __name__ == "__main__":
    main("linear", __doc__, arguments, variant=lambda args: "_warm" if args.weights == "warm" else "")
