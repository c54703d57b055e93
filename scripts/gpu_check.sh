#!/usr/bin/env bash
# One command to prove prunekit's CUDA work on a machine with an NVIDIA GPU and a CUDA build of
# torch, with no package registry and no internet (known target: one H100 or H200, Python 3.12,
# torch 2.11+cu130, nvcc 13.0, CMake, ninja, pytest). Needs no pip: it builds the extension with
# CMake against the installed torch, then runs every CUDA test, the small sanitizer selection under
# compute-sanitizer, and the CUDA benchmarks. On the development machine, scripts/gpu_prebuild.sh
# puts the CUTLASS headers into third_party/cutlass and the torch-free kernels, compiled, into
# build/gpu-prebuilt: carried with the tree, the GPU machine then compiles only the glue that must
# match its torch (it compiles everything when the prebuilt kernels do not match the tree).
#
#   scripts/gpu_check.sh OUTDIR [PACKDIR]
#
# OUTDIR receives one log per stage, summary.md (GPU, commit, each stage's result and time),
# tests_cuda.xml (JUnit) and bench/<family>.{json,md}. With PACKDIR, summary.md and a tarball of
# OUTDIR are also copied there (for a tool that brings back only a few files). Stages run on after
# a failure where they do not depend on it; the exit code is 1 when any stage failed. Every stage
# has a time limit, clipped to what is left of the whole check's (470 s: under 8 minutes).
#
# Environment: PYTHON (python3), JOBS (all cores), PRUNEKIT_COMMIT (the commit, where the tree has
# no .git), GPU_CHECK_ARCHS (CMAKE_CUDA_ARCHITECTURES; default: the extension's own list),
# GPU_CHECK_BUILD_DIR (build/gpu-check), GPU_CHECK_SKIP (stages to skip, comma-separated),
# GPU_CHECK_DEADLINE (seconds for the whole check, default 470), GPU_CHECK_BENCH (benchmark modules
# of prunekit.app.benchmarks to run, comma-separated; default: the families whose results are *_cuda).
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [PACKDIR]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
PACK=${2:-}
export PYTHON=${PYTHON:-python3}
export JOBS=${JOBS:-$(nproc)}
export BUILD=${GPU_CHECK_BUILD_DIR:-$ROOT/build/gpu-check}
export STAGE_DIR=$BUILD/stage
export OUT ROOT
export GPU_CHECK_ARCHS=${GPU_CHECK_ARCHS:-80-real;90a-real;80-virtual}  # the extension's default list
if [ -z "${PRUNEKIT_COMMIT:-}" ]; then
  PRUNEKIT_COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
fi
export PRUNEKIT_COMMIT
export PYTHONUNBUFFERED=1
SKIP=",${GPU_CHECK_SKIP:-},"
DEADLINE=${GPU_CHECK_DEADLINE:-470}  # seconds for the whole check (8 minutes, less a margin)
started=$SECONDS
rm -f "$OUT"/*.log "$OUT/summary.md"
declare -a rows=()
failed=0
build_ok=1

# ---- stages (each runs in its own bash under `timeout`, output to OUTDIR/<stage>.log) ----
stage_env() {
  echo "commit: $PRUNEKIT_COMMIT"
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  nvcc --version | tail -2
  cmake --version | head -1
  ninja --version
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  echo "compute-sanitizer: ${SANITIZER:-not found}"
  nproc
}

stage_build() {
  # The torch-free kernels prebuilt on the development machine (scripts/gpu_prebuild.sh), when they
  # were built from this very tree, nvcc and arch list; else compiled here with the rest.
  local prebuilt="$ROOT/build/gpu-prebuilt" core=""
  if [ -f "$prebuilt/STAMP" ] && [ "$(cat "$prebuilt/STAMP")" = "$(bash "$ROOT/scripts/gpu_stamp.sh" "$GPU_CHECK_ARCHS")" ]; then
    core="$prebuilt/libprunekit_core_cuda.a"
    echo "linking the prebuilt torch-free kernels $core ($(cat "$prebuilt/STAMP"))"
  else
    echo "no matching prebuilt torch-free kernels in $prebuilt: compiling them here"
  fi
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DPRUNEKIT_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$PYTHON")" -DCMAKE_CUDA_ARCHITECTURES="$GPU_CHECK_ARCHS" \
    -DPRUNEKIT_CORE_CUDA_LIBRARY="$core" || return 1
  local t0=$SECONDS
  cmake --build "$BUILD" -j "$JOBS" || return 1
  echo "compiled in $((SECONDS - t0)) s with $JOBS jobs"
  # The package as it installs: the Python sources and the extension side by side.
  rm -rf "$STAGE_DIR" && mkdir -p "$STAGE_DIR" || return 1
  cp -R "$ROOT/python/prunekit" "$STAGE_DIR/prunekit" && cp "$BUILD"/_C*.so "$STAGE_DIR/prunekit/" || return 1
  (cd /tmp && PYTHONPATH="$STAGE_DIR" "$PYTHON" -c "import json, prunekit; print(json.dumps(prunekit.build_info(), indent=1))")
}

stage_registration() {
  PYTHONPATH="$STAGE_DIR" "$PYTHON" "$ROOT/scripts/check_cuda_ops.py"
}

stage_tests() {
  PYTHONPATH="$STAGE_DIR" "$PYTHON" -m pytest tests -m cuda -q -rs -p no:cacheprovider \
    --junitxml="$OUT/tests_cuda.xml"
}

# The tests marked `sanitize` (small CUDA cases, one per kernel) under one compute-sanitizer tool.
sanitize_with() {
  local tool=$1
  PYTHONPATH="$STAGE_DIR" PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 1 \
    --target-processes all "$PYTHON" -m pytest tests -m "cuda and sanitize" -q -p no:cacheprovider
}
stage_memcheck() { sanitize_with memcheck; }
stage_racecheck() { sanitize_with racecheck; }
stage_synccheck() { sanitize_with synccheck; }

stage_bench() {
  PYTHONPATH="$STAGE_DIR" "$PYTHON" - <<'EOF'
import importlib, os, sys
from prunekit.app import benchmarks
from prunekit.app.benchmarks import common
failed = []
# GPU_CHECK_BENCH names modules of prunekit.app.benchmarks; by default the CUDA families (results *_cuda).
names = [n for n in os.environ.get("GPU_CHECK_BENCH", "").split(",") if n] or [
    n for n in benchmarks.FAMILIES if benchmarks.family(n).NAME.endswith("_cuda")]
print("benchmarks:", ", ".join(names))
for name in names:
    module = importlib.import_module(f"prunekit.app.benchmarks.{name}")
    ok, why = module.available() if hasattr(module, "available") else (True, "")
    if not ok:
        print(f"{name}: skipped ({why})")
        failed.append(name)
        continue
    try:
        rows = module.run(False, on_row=lambda row, m=module: print(f"{name}: {m.describe(row)}", flush=True))
    except Exception as error:  # one family failing must not hide the others' results
        import traceback
        traceback.print_exc()
        failed.append(name)
        continue
    machine = common.machine_info()
    machine["commit"] = os.environ.get("PRUNEKIT_COMMIT", machine.get("commit"))
    paths = common.write_results(os.path.join(os.environ["OUT"], "bench"), module.NAME, rows, module.COLUMNS,
                                 module.TITLE, machine=machine)
    print(f"{name}: wrote", *paths)
    for row in module.summarize(rows):
        print(f"{name}: {row['case']}: {row['speedup']:.2f}x vs {row['baseline']} (min {row['min']:.2f}, max {row['max']:.2f})")
sys.exit(1 if failed else 0)
EOF
}
export -f stage_env stage_build stage_registration stage_tests sanitize_with stage_memcheck stage_racecheck \
  stage_synccheck stage_bench

# run_stage NAME LIMIT_S [needs_build]: the limit shrinks to what is left of the whole run's.
run_stage() {
  local name=$1 limit=$2 needs_build=${3:-0} t0=$SECONDS status rc left
  left=$((DEADLINE - (SECONDS - started)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [[ $SKIP == *",$name,"* ]]; then
    status="skipped (GPU_CHECK_SKIP)"
  elif [ "$limit" -lt 10 ]; then
    status="FAILED (not run: the ${DEADLINE} s of the whole check were spent)"
    failed=1
  elif [ "$needs_build" = 1 ] && [ $build_ok = 0 ]; then
    status="skipped (build failed)"
    failed=1
  else
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=15 "$limit" bash -c "stage_$name" >"$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      124 | 137) status="FAILED (time limit ${limit} s)"; failed=1 ;;
      *) status="FAILED (exit $rc)"; failed=1 ;;
    esac
    [ "$name" = build ] && [ $rc != 0 ] && build_ok=0
    echo "   $status in $((SECONDS - t0)) s; log: $name.log"
  fi
  rows+=("| $name | $status | $((SECONDS - t0)) | $name.log |")
}

# compute-sanitizer: on PATH, else beside nvcc or in a CUDA toolkit folder.
SANITIZER=$(command -v compute-sanitizer ||
  ls "$(dirname "$(command -v nvcc 2>/dev/null || echo /none/nvcc)")"/compute-sanitizer \
    /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
export SANITIZER
run_stage env 30
run_stage build 240
run_stage registration 30 1
run_stage tests 150 1
run_stage bench 150 1
if [ -n "$SANITIZER" ]; then
  run_stage memcheck 60 1
  run_stage racecheck 60 1
  run_stage synccheck 45 1
else
  rows+=("| sanitizer | FAILED (compute-sanitizer not found) | 0 | - |")
  failed=1
fi

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
{
  echo "# prunekit GPU check"
  echo
  echo "- GPU: ${gpu:-none found}"
  echo "- commit: $PRUNEKIT_COMMIT"
  echo "- torch: $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
  echo "- total: $((SECONDS - started)) s"
  echo "- result: $([ $failed = 0 ] && echo PASS || echo FAIL)"
  echo
  echo "| stage | result | seconds | log |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  if [ -f "$OUT/tests.log" ]; then
    echo
    echo "Tests: $(grep -E '^(=+ )?[0-9]+ (passed|failed)|passed|failed' "$OUT/tests.log" | tail -1)"
  fi
  if [ -f "$OUT/bench.log" ]; then
    echo
    echo "Benchmark summary:"
    echo
    grep -E '^[a-z_0-9]+: .*x vs ' "$OUT/bench.log" | sed 's/^/- /'
  fi
} >"$OUT/summary.md"
cat "$OUT/summary.md"
if [ -n "$PACK" ]; then
  mkdir -p "$PACK"
  cp "$OUT/summary.md" "$PACK/summary.md"
  tar -czf "$PACK/gpu_check_logs.tar.gz" -C "$OUT" .
fi
exit $failed
