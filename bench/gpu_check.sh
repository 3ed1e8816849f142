#!/usr/bin/env bash
# One command for a lent GPU machine (H100/H200, torch 2.11 + CUDA 13, no internet):
# build peftcore from source against the torch there, run the CUDA tests, run the
# GPU benchmark sweep. Everything lands in $OUT as two files (the device tool
# returns at most 8): summary.txt (the tails worth reading at once) and
# gpu_results.tgz (all logs, JSON/CSV/Markdown results) to unpack under
# bench/results/ and commit.
# Usage there:  OUT=/some/dir BUDGET_S=420 bash bench/gpu_check.sh [bench/run.py options]
# Each phase gets a share of BUDGET_S (wall seconds for the whole script) so that the
# script ends on its own, with its results written, before the device tool's limit.
set -uo pipefail
BUDGET_S=${BUDGET_S:-540}
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
cap() { local l; l=$(left); echo $(( l < $1 ? (l > 5 ? l : 5) : $1 )); }
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
    echo "---- CUDA tests"; grep -E "^(FAILED|ERROR)|passed|failed|node down|crashed" "$WORK/tests_cuda.log" 2>/dev/null | tail -40
    echo "---- first failures"; grep -B2 -A25 -m3 "^E  " "$WORK/tests_cuda.log" 2>/dev/null | head -150
    echo "---- benchmarks"; grep -v "it/s\]$\|s/it\]$" "$WORK/bench.log" 2>/dev/null | tail -120
    echo "---- profile (top kernels per case; full tables in profile.log)"
    grep -A8 "^====" "$WORK/profile.log" 2>/dev/null | cut -c1-160 | head -120
    echo "---- parts (each pass alone vs its floor; parts.log)"; head -90 "$WORK/parts.log" 2>/dev/null
    echo "---- sanitizer"; tail -20 "$WORK/sanitizer.log" 2>/dev/null
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
  timeout "$(cap 300)" "$PY" -m pip install -v --no-build-isolation --no-deps --no-cache-dir . > "$WORK/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$WORK/env.txt"
[ $rc -eq 0 ] || { tail -50 "$WORK/build.log"; exit $rc; }
# From outside the source tree, so that the installed package (with _C) is imported.
(cd /tmp && "$PY" -c "import peftcore; print(peftcore.build_info())") 2>&1 | tee -a "$WORK/env.txt"

# The CUDA tests only (the CPU ones run in CI); no -x, so one failure hides no other.
PHASES=${PHASES:-"diag tests bench profile sanitize"}
has() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }

# Errors raised inside the extension must come back as Python exceptions, never a crash.
has diag && (cd /tmp && timeout "$(cap 150)" "$PY" "$OLDPWD/bench/diag/errors.py") 2>&1 | tee -a "$WORK/env.txt"

# pytest-timeout turns a hung kernel into one failure; pytest-xdist (when installed)
# replaces a crashed worker, so one segfault does not hide the tests after it.
TEST_OPTS=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=120")
TEST_OPTS="$TEST_OPTS $("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")"
has tests && timeout "$(cap 170)" "$PY" -m pytest tests -q -k "cuda" -p no:cacheprovider $TEST_OPTS \
  --deselect tests/test_cuda_kernels_emulated.py 2>&1 | tee "$WORK/tests_cuda.log" | grep -E "^(FAILED|ERROR)|passed|failed"

# One process per family, each with its own cap, so a slow family cannot starve the rest.
for family in $(has bench && echo ${FAMILIES:-lora adapters optim sparse masked select}); do
  timeout "$(cap ${FAMILY_CAP_S:-80})" "$PY" bench/run.py --device cuda --ops "$family" --out "$WORK/bench" "$@" 2>&1 \
    | tee -a "$WORK/bench.log" | grep -v "it/s\]$\|s/it\]$" | tail -30
done

# Kernel-by-kernel CUDA time of the cases still short of their targets.
has profile && (cd /tmp && timeout "$(cap ${PROFILE_CAP_S:-90})" "$PY" "$OLDPWD/bench/diag/profile_gpu.py") \
  > "$WORK/profile.log" 2>&1
# Each LoRA / bat pass timed alone, with the alternative formulations side by side.
has profile && (cd /tmp && timeout "$(cap ${PARTS_CAP_S:-60})" "$PY" "$OLDPWD/bench/diag/skinny_parts.py") \
  > "$WORK/parts.log" 2>&1

# Out-of-bounds and race checks of every kernel family on small shapes, with what time is left.
if has sanitize && command -v compute-sanitizer > /dev/null && [ "$(left)" -gt 40 ]; then
  (cd /tmp && timeout "$(cap 120)" compute-sanitizer --tool memcheck --print-limit 20 \
     "$PY" "$OLDPWD/bench/sanitize_smoke.py") > "$WORK/sanitizer.log" 2>&1
  echo "sanitizer rc=$?" >> "$WORK/sanitizer.log"
fi
