#!/usr/bin/env bash
# Checks that the C++/CUDA sources of csrc/ and tests/core are formatted as .clang-format says, and
# lists the files that are not (exit status 1). With --fix, formats them in place instead.
# clang-format is pinned (its output changes between versions) and installed from PyPI when the
# one on PATH is another version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VERSION=19.1.7
PYTHON=${PYTHON:-python3}

version_of() { "$1" --version 2>/dev/null | sed -n 's/.*clang-format version \([0-9.]*\).*/\1/p'; }

CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
if [ "$(version_of "$CLANG_FORMAT")" != "$VERSION" ]; then
  CLANG_FORMAT="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/clang-format"
  if [ "$(version_of "$CLANG_FORMAT")" != "$VERSION" ]; then
    "$PYTHON" -m pip install -q "clang-format==$VERSION"
  fi
fi
if [ "$(version_of "$CLANG_FORMAT")" != "$VERSION" ]; then
  echo "clang_format_check: clang-format $VERSION not found after 'pip install clang-format==$VERSION'" >&2
  exit 2
fi

mapfile -t files < <(git ls-files -- 'csrc/*.h' 'csrc/*.cc' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' \
  'tests/core/*.h' 'tests/core/*.cc')
if [ "${1:-}" = "--fix" ]; then
  "$CLANG_FORMAT" -i "${files[@]}"
  exit 0
fi
unformatted=()
for file in "${files[@]}"; do
  "$CLANG_FORMAT" --dry-run --Werror "$file" >/dev/null 2>&1 || unformatted+=("$file")
done
if [ ${#unformatted[@]} -gt 0 ]; then
  echo "clang-format $VERSION: ${#unformatted[@]} file(s) not formatted (fix: bash scripts/clang_format_check.sh --fix):"
  printf '  %s\n' "${unformatted[@]}"
  exit 1
fi
echo "clang-format $VERSION: ${#files[@]} files formatted"
