"""Sparse linear on CPU vs dense F.linear and torch's CSR path, side by side in one process.

For each named shape, batch, dtype and pattern (unstructured 50%/90%, 2:4): time of
prunekit.ops.sparse_linear, dense F.linear of the same dtype, and torch.sparse.mm on a CSR
weight (fp32), the speed-ups, effective (dense-equivalent) and actual GFLOP/s, and at batch 1
the weight bandwidth in GB/s (bytes of the compressed weight per call). The logic lives in
prunekit.app.benchmarks.linear (also run by `prunekit bench`).

    python bench/bench_linear.py [--quick] [--threads N] [--rounds R] [--weights warm|cold]
    # writes bench/results/linear_cpu[_cold][_quick].{json,md}

--rounds R times prunekit and the baselines alternately R times and keeps each one's best (on a
shared, noisy machine the recorded tables use R = 2). --weights: warm (default) reuses one copy of
each weight, which stays in the caches as far as the machine's other load leaves it room; cold
gives every call another copy, the copies together larger than the last-level cache, so that
batch 1 reads its weight from memory, as decoding a model larger than the caches does.
"""

from _common import main



def arguments(parser) -> list[str]:
    parser.add_argument("--rounds", type=int, default=1, help="alternating timing rounds, best kept")
    parser.add_argument("--weights", choices=("warm", "cold"), default="warm",
                        help="one copy of each weight, reused (warm), or another copy per call, from memory (cold)")
    return ["rounds", "weights"]


if __name__ == "__main__":
    main("linear", __doc__, arguments, variant=lambda args: "_cold" if args.weights == "cold" else "")
