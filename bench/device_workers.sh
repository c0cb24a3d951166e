#!/usr/bin/env bash
# `dagserve serve --workers N` against Triton 2.51 on the GPU machine's 16 cores, through the
# device tool, from the project root (.device-carry as for bench/device_run.sh):
#   run(command="bash bench/device_workers.sh", carry=[".device-carry"], timeout_s=600)
# Triton and dagserve as one process first, then one dagserve run per entry of VARIANTS (extra
# `serve` flags, ';'-separated), each on the Triton ensemble of three Python steps with
# perf_analyzer at c1/16/64 over HTTP and gRPC. Prints one table per variant (with the same
# Triton figures) and the CPU each used; then bench/bench_placement.py (PLACEMENT=0 skips it);
# leaves it all in $OUT/workers.txt.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
COMPARE="$CARRY/triton-reference/device/compare.sh"
[ -f "$COMPARE" ] || COMPARE=../shared/triton-reference/device/compare.sh
MATRIX=${MATRIX:-'classify http 1,16,64 RAW:32; classify grpc 1,16,64 RAW:32'}
VARIANTS=${VARIANTS:-'--workers 8; --workers 8 --python-execution inline; --workers 16 --python-execution inline'}
{
  echo "== machine: $(nproc) cores"
  # The base run is one process (the default was --workers 1; it is auto now): the env pins it.
  DAGSERVE_WORKERS=1 OUT=/tmp/cmp_base bash "$COMPARE" bench/repos/triton_ensemble --matrix "$MATRIX" > /tmp/cmp_base.log 2>&1
  echo "== dagserve (one process: DAGSERVE_WORKERS=1) vs Triton"; cat /tmp/cmp_base/table.txt; cat /tmp/cmp_base/cpu.txt
  i=0
  IFS=';' read -ra variants <<< "$VARIANTS"
  for v in "${variants[@]}"; do
    i=$((i + 1))
    OUT=/tmp/cmp_$i DAGSERVE_ARGS="$v" bash "$COMPARE" bench/repos/triton_ensemble --parts dagserve \
        --matrix "$MATRIX" > /tmp/cmp_$i.log 2>&1
    echo "== dagserve $v (same Triton figures as above)"
    bash "$COMPARE" --table /tmp/cmp_base/results.tsv /tmp/cmp_$i/results.tsv
    cat /tmp/cmp_$i/cpu.txt
    tail -n 3 /tmp/cmp_$i.log
  done
  if [ "${PLACEMENT:-1}" = 1 ]; then
    echo "== placement of the batched classifier step: replicate vs one (bench/bench_placement.py)"
    WORK=${COMPARE_WORK:-/tmp/dagserve-compare}
    PYTHONPATH="$WORK/site" timeout 300 python3 bench/bench_placement.py --workers "${PLACEMENT_WORKERS:-16}" \
        --concurrency 64 --perf-analyzer "$WORK/pa/perf_analyzer/bin/perf_analyzer"
  fi
} 2>&1 | tee "$OUT/workers.txt"
