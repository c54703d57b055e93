#!/usr/bin/env bash
# Prints the stamp of the torch-free CUDA kernels as scripts/gpu_prebuild.sh builds them: a hash of
# their sources and headers (csrc/core/cuda, csrc/include, the vendored CUTLASS version), the nvcc
# release and the arch list given as $1. The same command on the GPU machine tells whether a
# carried prebuilt library still matches the tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
archs=${1:?usage: gpu_stamp.sh ARCHS}
sources=$(find csrc/core/cuda csrc/include -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' \) | LC_ALL=C sort |
  xargs sha256sum | sha256sum | cut -d' ' -f1)
nvcc_release=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
echo "sources=$sources cutlass=$(cat third_party/cutlass/VERSION 2>/dev/null || echo none) nvcc=$nvcc_release archs=$archs"
