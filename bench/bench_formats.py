"""2:4 conversion and N:M mask ops against torch's own paths, side by side in one process.

Baselines: torch.sparse._semi_structured_conversions (the CUTLASS-layout converters that
to_sparse_semi_structured uses on CPU) and a topk-based N:M mask in plain torch. Reports the
speed-up ratio and the effective bandwidth (bytes of the dense matrix per second). The logic
lives in prunekit.app.benchmarks.formats (also run by `prunekit bench`).

    python bench/bench_formats.py [--quick] [--threads N]   # writes bench/results/formats_cpu[_quick].{json,md}
"""

from _common import main

if __name__ == "__main__":
    main("formats", __doc__)
