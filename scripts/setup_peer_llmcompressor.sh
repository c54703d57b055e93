#!/usr/bin/env bash
# The peer of bench/bench_peer_llmcompressor.py: llm-compressor in its own clean virtual environment
# (no system site-packages, so its transformers/accelerate pins never mix with prunekit's), with torch
# pinned to prunekit's version in the same pip command, so pip never resolves another torch.
#
#   bash scripts/setup_peer_llmcompressor.sh            # creates /opt/venv-llmc
#   PEER_VENV=/path/to/venv bash scripts/setup_peer_llmcompressor.sh
set -euo pipefail

PEER_VENV="${PEER_VENV:-/opt/venv-llmc}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
LLMCOMPRESSOR_VERSION="${LLMCOMPRESSOR_VERSION:-0.14.0.1}"
WHEELS="${WHEELS:-/opt/wheels}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  PYTHON=python3
fi
if [ -x "$PEER_VENV/bin/python" ] && "$PEER_VENV/bin/python" -c "import llmcompressor, torch; \
assert torch.__version__.split('+')[0] == '$TORCH_VERSION'" >/dev/null 2>&1; then
  echo "setup_peer_llmcompressor: $PEER_VENV already has llmcompressor and torch $TORCH_VERSION"
  exit 0
fi

"$PYTHON" -m venv "$PEER_VENV"
pip_args=(--disable-pip-version-check)
if [ -d "$WHEELS" ]; then
  pip_args+=(--find-links "$WHEELS")
fi
# One command: llmcompressor's requirements are resolved against the pinned torch (a CPU wheel from
# $WHEELS where there is one), never against a newer torch it would otherwise pull.
"$PEER_VENV/bin/python" -m pip install "${pip_args[@]}" \
  "torch==$TORCH_VERSION" "llmcompressor==$LLMCOMPRESSOR_VERSION"
"$PEER_VENV/bin/python" - <<EOF
import importlib.metadata as metadata
import torch
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
print("setup_peer_llmcompressor: torch", torch.__version__, "llmcompressor", metadata.version("llmcompressor"),
      "transformers", metadata.version("transformers"), "in $PEER_VENV")
EOF
