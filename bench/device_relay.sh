#!/usr/bin/env bash
# The gRPC relay (--worker-relay) on the GPU machine's 16 cores, through the device tool, from
# the project root (.device-carry as for bench/device_run.sh):
#   run(command="bash bench/device_relay.sh", carry=[".device-carry"], timeout_s=400)
# dagserve alone (--workers 16, no Triton: compare its ratios with a run of bench/device_workers.sh)
# on the Triton ensemble of three Python steps, perf_analyzer over gRPC at c16/c64 and HTTP at
# c16, with the relay (the default) and then with --worker-relay false, one after the other;
# prints both tables and the CPU sampled during each run's last entry; leaves them in $OUT/relay.txt.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
COMPARE="$CARRY/triton-reference/device/compare.sh"
[ -f "$COMPARE" ] || COMPARE=../shared/triton-reference/device/compare.sh
MATRIX=${MATRIX:-'classify http 16 RAW:32; classify grpc 16,64 RAW:32'}
{
  echo "== machine: $(nproc) cores; $(git log --oneline -1 2>/dev/null | cut -c1-72)"
  for variant in "--workers 16" "--workers 16 --worker-relay false"; do
    tag=${variant//[^a-z0-9]/_}
    OUT=/tmp/relay$tag DAGSERVE_ARGS="$variant" bash "$COMPARE" bench/repos/triton_ensemble --parts dagserve \
        --matrix "$MATRIX" > "/tmp/relay$tag.log" 2>&1 || tail -n 20 "/tmp/relay$tag.log"
    echo "== dagserve $variant"
    grep classify "/tmp/relay$tag/table.txt"
    cat "/tmp/relay$tag/cpu.txt"
  done
} 2>&1 | tee "$OUT/relay.txt"
