#!/usr/bin/env bash
# The GPU machine's checks in one command: the gpu-marked tests, then the performance table
# with the search's trials sharing the GPU sixteen at a time. The machine's image lacks ray,
# mlflow and optuna: build the bundle here first and unpack it there (../shared/GPU.md):
#
#   here:   bash ../shared/tools/gpu-bundle.sh            # .gpusite/ and .fmdata/, git-ignored
#   call 1: carry [".gpusite"]   mkdir -p /tmp/site && xz -dc -T0 .gpusite/gpusite.tar.xz | tar -x -C /tmp/site
#   call 2: carry [".fmdata"]    bash benchmarks/gpu.sh   (straight after: /tmp lives while the machine is warm)
#
# Logs land in $OUT (the device tool brings that folder back): tests.log, bench.log, bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/fmae-gpu-out}; mkdir -p "$out" /tmp/w
export PYTHONPATH=/tmp/site:$PWD FMAE_DATA_DIR=${FMAE_DATA_DIR:-$PWD/.fmdata} PYTHONUNBUFFERED=1
export RAY_AUTH_MODE=disabled MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export MLFLOW_TRACKING_URI=sqlite:////tmp/w/mlflow.db
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# 1. correctness: every step on cuda, a fractional gpus_per_trial, models loading both ways
timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -60 > "$out/tests.log"
echo "gpu tests: exit ${PIPESTATUS[0]}" | tee -a "$out/tests.log"

# 2. speed: seed-style vs fmae's training path, and the search (small, one pending, defaults)
timeout "${BENCH_TIMEOUT:-330}" python3 -m benchmarks.performance --device cuda \
  --search "${SEARCHES:-peer,default}" --tune_args "--gpus_per_trial 0.0625" \
  --json "$out/bench.json" --figure "$out/time_to_quality.png" 2>&1 | grep -v "^\s*$" | tail -80 > "$out/bench.log"
echo "benchmark: exit ${PIPESTATUS[0]}" | tee -a "$out/bench.log"
tail -25 "$out/bench.log"
