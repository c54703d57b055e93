"""Batch-1 sparse linear per CPU kernel variant (scalar, AVX2, AVX-512, ...) vs dense F.linear.

The bars of the AVX2 catch-up (issue #27) are stated on an AVX2 machine: fp32 at 50% and bf16 at
2:4, 4096x4096, batch 1, ratio to dense in one run. On a machine with AVX-512 this forces each
runnable variant in turn (``prunekit._C._set_cpu_isa``), so the AVX2 kernels are timed on the same
memory system as the AVX-512 ones: a proxy for an AVX2-only CPU, not a substitute. Dense torch is
timed alongside each variant (its own ISA choice is not affected).

    python bench/bench_gemv_isa.py [--threads 2] [--rounds 3] [--weights cold|warm] [--isa avx2,avx512]
    # writes bench/results/gemv_isa_cpu[_warm].{json,md}
"""

import argparse

import torch
from _common import write_results

import prunekit
from prunekit.app.benchmarks import linear

COLUMNS = ["isa", "shape", "dtype", "pattern", "batch", "weights", "prunekit_ms", "dense_ms", "speedup_vs_dense",
           "weight_GB_s"]
CASES = (("float32", "50%"), ("bfloat16", "2:4"), ("float32", "2:4"), ("bfloat16", "50%"), ("float32", "90%"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds, best kept")
    parser.add_argument("--weights", choices=("cold", "warm"), default="cold")
    parser.add_argument("--isa", default=None, help="comma-separated variants (default: every runnable one "
                                                    "but scalar)")
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = prunekit.build_info()
    isas = args.isa.split(",") if args.isa else [i for i in info["cpu_isas_runnable"] if i != "scalar"]
    rows = []
    try:
        for isa in isas:
            prunekit._C._set_cpu_isa(isa)
            for dtype, pattern in CASES:
                for row in linear.run(shapes={f"{args.size}x{args.size}": (args.size, args.size)}, batches=(1,),
                                      patterns=(pattern,), dtypes=(getattr(torch, dtype),), csr=False,
                                      rounds=args.rounds, weights=args.weights):
                    row = {"isa": isa, **row}
                    rows.append(row)
                    print(f"{isa:>7} {linear.describe(row)}", flush=True)
    finally:
        prunekit._C._set_cpu_isa("")
    suffix = "" if args.weights == "cold" else "_warm"
    print("wrote", *write_results(f"gemv_isa_cpu{suffix}", rows, COLUMNS,
                                  "Batch-1 sparse linear per CPU kernel variant vs dense F.linear"))


if __name__ == "__main__":
    main()
