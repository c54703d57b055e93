#!/usr/bin/env bash
# Development machine: copies the CUTLASS headers of the nvidia-cutlass wheel (installed here with
# --no-deps when missing) into third_party/cutlass/include, a git-ignored folder that
# cmake/PrunekitCuda.cmake searches first. The headers then travel with the working tree to a GPU
# machine without a package registry (scripts/gpu_check.sh). Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
CUTLASS_VERSION=${CUTLASS_VERSION:-4.2.0.0}
dest=third_party/cutlass/include

find_headers() {
  "$PYTHON" -c "import importlib.util, pathlib; s = importlib.util.find_spec('cutlass_library'); print(pathlib.Path(s.origin).parent / 'source' / 'include' if s else '')"
}
src=$(find_headers)
if [ -z "$src" ] || [ ! -f "$src/cutlass/cutlass.h" ]; then
  echo "vendor_cutlass: installing nvidia-cutlass==$CUTLASS_VERSION (headers only: --no-deps)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps "nvidia-cutlass==$CUTLASS_VERSION"
  src=$(find_headers)
fi
if [ ! -f "$src/cutlass/cutlass.h" ]; then
  echo "vendor_cutlass: no CUTLASS headers found (looked in '$src')" >&2
  exit 1
fi
version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('nvidia-cutlass'))" 2>/dev/null || echo unknown)
if [ -f "$dest/cutlass/cutlass.h" ] && [ "$(cat third_party/cutlass/VERSION 2>/dev/null)" = "$version" ]; then
  echo "vendor_cutlass: $dest already holds CUTLASS $version"
  exit 0
fi
rm -rf third_party/cutlass.tmp
mkdir -p third_party/cutlass.tmp
cp -R "$src" third_party/cutlass.tmp/include
echo "$version" > third_party/cutlass.tmp/VERSION
rm -rf third_party/cutlass
mv third_party/cutlass.tmp third_party/cutlass
echo "vendor_cutlass: CUTLASS $version headers in $dest ($(du -sh "$dest" | cut -f1)); carry third_party/cutlass to a GPU machine"
