#!/usr/bin/env bash
# One command for a lent GPU machine (H100/H200, torch 2.11 + CUDA 13, no internet):
# build peftcore from source against the torch there, run the CUDA tests, run the
# GPU benchmark sweep. Everything lands in $OUT as two files (the device tool
# returns at most 8): summary.txt (the tails worth reading at once) and
# gpu_results.tgz (all logs, JSON/CSV/Markdown results) to unpack under
# bench/results/ and commit.
# Usage there:  OUT=/some/dir bash bench/gpu_check.sh [bench/run.py options, e.g. --quick]
set -uo pipefail
OUT=${OUT:-/tmp/peftcore-gpu}
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/bench"
cd "$(dirname "$0")/.."
PY=$(command -v "${PYTHON:-python3}")
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute (not resolved): used from /tmp below
export PYTHONUNBUFFERED=1

finish() {
  tar czf "$OUT/gpu_results.tgz" -C "$WORK" .
  {
    cat "$WORK/env.txt" 2>/dev/null
    echo "---- CUDA tests"; tail -30 "$WORK/tests_cuda.log" 2>/dev/null
    echo "---- benchmarks"; tail -80 "$WORK/bench.log" 2>/dev/null
  } > "$OUT/summary.txt"
}
trap finish EXIT

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$WORK/env.txt"

# Hopper only, all cores: the build takes about a minute there.
start=$(date +%s)
PEFTCORE_ENABLE_CUDA=ON PEFTCORE_CUDA_ARCHITECTURES=90 CMAKE_BUILD_PARALLEL_LEVEL=16 \
  "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir . > "$WORK/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$WORK/env.txt"
[ $rc -eq 0 ] || { tail -50 "$WORK/build.log"; exit $rc; }
# From outside the source tree, so that the installed package (with _C) is imported.
(cd /tmp && "$PY" -c "import peftcore; print(peftcore.build_info())") 2>&1 | tee -a "$WORK/env.txt"

# The CUDA tests only (the CPU ones run in CI); no -x, so one failure hides no other.
"$PY" -m pytest tests -q -k "cuda" -p no:cacheprovider 2>&1 | tee "$WORK/tests_cuda.log" | tail -25

"$PY" bench/run.py --device cuda --out "$WORK/bench" "$@" 2>&1 | tee "$WORK/bench.log" | tail -60
