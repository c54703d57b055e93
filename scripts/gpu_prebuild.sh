#!/usr/bin/env bash
# Development machine, before a GPU check: prepares what travels with the tree to a GPU machine
# without a package registry (scripts/gpu_check.sh), so that it compiles only what must match its
# torch.
#   1. the CUTLASS headers into third_party/cutlass (scripts/vendor_cutlass.sh);
#   2. the torch-free CUDA kernels (csrc/core/cuda, which need no torch) compiled with this
#      machine's nvcc into build/gpu-prebuilt/libprunekit_core_cuda.a, for the extension's own
#      arch list, with a STAMP naming the sources, nvcc and archs it was built from.
# gpu_check.sh links the library instead of compiling those kernels when its STAMP still matches
# the tree (scripts/gpu_stamp.sh), and compiles them itself otherwise. Carry both folders:
# third_party/cutlass and build/gpu-prebuilt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
ARCHS=${GPU_CHECK_ARCHS:-80-real;90a-real;80-virtual}  # the extension's default list (CMakeLists.txt)
out=build/gpu-prebuilt
work=build/gpu-prebuilt-work

bash scripts/vendor_cutlass.sh
stamp=$(bash scripts/gpu_stamp.sh "$ARCHS")
if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$stamp" ] && [ -f "$out/libprunekit_core_cuda.a" ]; then
  echo "gpu_prebuild: $out is up to date"
  exit 0
fi
started=$SECONDS
cmake -S . -B "$work" -G Ninja -DPRUNEKIT_CUDA=KERNELS_ONLY -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" -DPython_EXECUTABLE="$(command -v "$PYTHON")" >/dev/null
cmake --build "$work" --target prunekit_core_cuda -j "$JOBS"
mkdir -p "$out"
cp "$work/libprunekit_core_cuda.a" "$out/libprunekit_core_cuda.a"
echo "$stamp" >"$out/STAMP"
echo "gpu_prebuild: $out/libprunekit_core_cuda.a ($(du -h "$out/libprunekit_core_cuda.a" | cut -f1)) for $ARCHS in" \
  "$((SECONDS - started)) s; carry third_party/cutlass and $out"
