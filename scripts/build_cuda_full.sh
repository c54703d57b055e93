#!/usr/bin/env bash
# Builds the full extension with CUDA (kernels and ATen glue, linked) against torch's CUDA build
# on a machine without a GPU, imports it, and checks that every op whose glue registers a CUDA
# kernel is registered for CUDA (scripts/check_cuda_ops.py). Nothing runs on a GPU: this proves
# that the glue compiles against a CUDA torch, links and loads.
#
# The torch is 2.14.1+cu130 (nvcc 13.0) in its own virtual environment at a fixed path, reused
# when it exists: $PRUNEKIT_CUDA_VENV, default /opt/venv-cu130 (outside the checkout, so CI's fresh
# clones reuse it). A missing venv is created, and torch==2.14.1 (installed from this machine's
# local files), the build dependencies and the CUTLASS headers (nvidia-cutlass, --no-deps) are
# installed into it when missing. The build directory build/cuda-full is incremental.
#
#   scripts/build_cuda_full.sh            # JOBS=N to choose the parallel compile jobs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${PRUNEKIT_CUDA_VENV:-/opt/venv-cu130}
TORCH_SPEC=${PRUNEKIT_CUDA_TORCH:-torch==2.14.1}
BUILD=${PRUNEKIT_CUDA_BUILD_DIR:-build/cuda-full}
JOBS=${JOBS:-$(nproc)}
started=$SECONDS

if ! command -v nvcc >/dev/null; then
  echo "build_cuda_full: nvcc not found; the full CUDA build needs the CUDA toolkit (nvcc 13.0)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "build_cuda_full: creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
py="$VENV/bin/python"
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }
missing() { ! "$py" -c "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))" "$@"; }
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "build_cuda_full: installing $TORCH_SPEC (a CUDA build) into $VENV"
  pip_install "$TORCH_SPEC"
fi
if missing scikit_build_core pybind11 numpy cmake ninja safetensors tqdm; then
  echo "build_cuda_full: installing the build dependencies into $VENV"
  pip_install "scikit-build-core>=0.10" "pybind11>=2.12" numpy cmake ninja safetensors tqdm
fi
if missing cutlass_library; then
  pip_install --no-deps nvidia-cutlass==4.2.0.0
fi
echo "build_cuda_full: torch $("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)') in $VENV"

# Build with CMake directly (incremental), with the venv's CMake, ninja and interpreter.
export PATH="$VENV/bin:$PATH"
mkdir -p "$BUILD"
cmake -S . -B "$BUILD" -G Ninja -DPRUNEKIT_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$py" >"$BUILD.configure.log" 2>&1 ||
  { cat "$BUILD.configure.log"; exit 1; }
compile_start=$SECONDS
cmake --build "$BUILD" -j "$JOBS"
echo "build_cuda_full: compiled and linked in $((SECONDS - compile_start)) s with $JOBS jobs"

# Import it as installed: the Python sources and the extension side by side.
root=$(pwd)
stage="$(cd "$BUILD" && pwd)/stage"
rm -rf "$stage"
mkdir -p "$stage"
cp -R python/prunekit "$stage/prunekit"
cp "$BUILD"/_C*.so "$stage/prunekit/"
(cd /tmp && PYTHONPATH="$stage" "$py" -W ignore "$root/scripts/check_cuda_ops.py" --sources "$root/csrc/cuda")
echo "build_cuda_full: done in $((SECONDS - started)) s"
