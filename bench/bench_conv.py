"""Sparse 1x1 convolution on CPU vs F.conv2d, side by side in one process (MobileNet-v1
pointwise layers, batch 1, fp32), at 50% and 90% sparsity, with effective and actual GFLOP/s.
The logic lives in prunekit.app.benchmarks.conv (also run by `prunekit bench`).

    python bench/bench_conv.py [--quick] [--threads N]   # writes bench/results/conv1x1_cpu[_quick].{json,md}
"""

from _common import main

if __name__ == "__main__":
    main("conv", __doc__)
