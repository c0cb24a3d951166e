#!/usr/bin/env bash
# bench/bench_flatness.py on the GPU machine's 16 cores, through the device tool, from the project
# root (.device-carry as for bench/device_run.sh):
#   run(command="bash bench/device_flatness.sh", carry=[".device-carry"], timeout_s=600)
# Sets up Triton 2.51, perf_analyzer and dagserve's wheels with compare.sh (one short probe run of
# each server; reused when the machine is still warm), then runs Triton and dagserve one at a time
# in interleaved rounds, each driven by the same perf_analyzer at one concurrency for 10-s windows,
# and prints every window and worst/best per server. FLATNESS_ARGS passes flags to bench_flatness.py
# (default: --windows 10 --rounds 2 --dagserve-args "--workers 16": about 8 minutes). Both servers
# run with the GPU hidden (the repository's steps are CPU-only). Leaves it in $OUT/flatness.txt.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
REF="$CARRY/triton-reference"
WORK=${COMPARE_WORK:-/tmp/dagserve-compare}
{
  echo "== machine: $(nproc) cores; $(git log --oneline -1 2>/dev/null | cut -c1-72)"
  OUT=/tmp/flat_setup bash "$REF/device/compare.sh" bench/repos/triton_ensemble --matrix 'classify http 1 RAW:32' \
      --window-ms 500 --max-trials 3 > /tmp/flat_setup.log 2>&1 || { tail -n 20 /tmp/flat_setup.log; exit 1; }
  # bench_flatness.py takes perf_analyzer from the Triton venv's bin/.
  ln -sf "$WORK/pa/perf_analyzer/bin/perf_analyzer" "$WORK/triton-venv/bin/perf_analyzer"
  eval "args=(${FLATNESS_ARGS:---windows 10 --rounds 2 --dagserve-args '--workers 16'})"
  CUDA_VISIBLE_DEVICES= TRITON_REFERENCE="$REF" PYTHONPATH="$WORK/site" \
      python3 bench/bench_flatness.py --triton-venv "$WORK/triton-venv" "${args[@]}"
} 2>&1 | tee "$OUT/flatness.txt"
