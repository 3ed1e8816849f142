#!/usr/bin/env bash
# One command for a lent GPU machine (H100/H200, torch 2.11 + CUDA 13, no internet):
# build peftcore from source against the torch there, run the CUDA tests, run the
# GPU benchmark sweep, and leave everything under $OUT (logs, JSON/CSV/Markdown).
# Usage there:  OUT=/some/dir bash bench/gpu_check.sh [--quick]
set -uo pipefail
OUT=${OUT:-/tmp/peftcore-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

# Hopper only, all cores: the build takes about a minute there.
start=$(date +%s)
PEFTCORE_ENABLE_CUDA=ON PEFTCORE_CUDA_ARCHITECTURES=90 CMAKE_BUILD_PARALLEL_LEVEL=16 \
  "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir . > "$OUT/build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
[ $rc -eq 0 ] || { tail -50 "$OUT/build.log"; exit $rc; }
# Run from outside the source tree so the installed package (with _C) is imported.
(cd /tmp && "$PY" -c "import peftcore; print(peftcore.build_info())") 2>&1 | tee -a "$OUT/env.txt"

# The CUDA tests only (the CPU ones run in CI); -x is off so that one failure
# does not hide the others.
"$PY" -m pytest tests -q -k "cuda" -p no:cacheprovider 2>&1 | tee "$OUT/tests_cuda.log" | tail -25

"$PY" bench/run.py --device cuda "$@" --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -60
