#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every test: lint (ruff, clang-format), the torch-free C++
# kernel tests under AddressSanitizer/UBSan (and for aarch64 under qemu-user where the cross
# toolchain is installed), where nvcc exists the KERNELS_ONLY CUDA compile, and the Python suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
bash scripts/setup.sh

echo "== lint: ruff (Python), clang-format (csrc/, tests/core)"
"$PYTHON" -m ruff check python tests bench scripts
bash scripts/clang_format_check.sh

echo "== torch-free C++ kernel tests (ASan + UBSan)"
cmake -S . -B build/core-asan -G Ninja -DPRUNEKIT_CORE_ONLY=ON -DCMAKE_BUILD_TYPE=Debug \
  -DPRUNEKIT_SANITIZE=address,undefined >/dev/null
cmake --build build/core-asan
ctest --test-dir build/core-asan --output-on-failure

if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
  echo "== torch-free C++ kernel tests for aarch64 (NEON variants), under qemu-user"
  cmake -S . -B build/core-aarch64 -G Ninja -DPRUNEKIT_CORE_ONLY=ON \
    -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake >/dev/null
  cmake --build build/core-aarch64
  ctest --test-dir build/core-aarch64 --output-on-failure
else
  echo "== aarch64 tests skipped: needs g++-aarch64-linux-gnu and qemu-user (apt-get install)"
fi

if [ "${PRUNEKIT_CUDA_COMPILE:-1}" = 0 ]; then
  echo "== KERNELS_ONLY skipped: PRUNEKIT_CUDA_COMPILE=0"
elif command -v nvcc >/dev/null; then
  echo "== KERNELS_ONLY: CUDA kernels for sm_80 and sm_90a (no GPU needed)"
  cmake -S . -B build/kernels-only -G Ninja -DPRUNEKIT_CUDA=KERNELS_ONLY -DPython_EXECUTABLE="$(command -v "$PYTHON")" >/dev/null
  cmake --build build/kernels-only
else
  echo "== KERNELS_ONLY skipped: no nvcc on this machine"
fi

echo "== Python tests"
"$PYTHON" -m pytest tests -q -p no:cacheprovider "$@"
