#!/usr/bin/env bash
# The gRPC relay (--worker-relay) on the GPU machine's 16 cores, through the device tool, from
# the project root (.device-carry as for bench/device_run.sh):
#   run(command="bash bench/device_relay.sh", carry=[".device-carry"], timeout_s=400)
# dagserve alone (--workers 16, no Triton: compare its ratios with a run of bench/device_workers.sh)
# on the Triton ensemble of three Python steps, perf_analyzer over gRPC and HTTP at c16/c64, with the relay (the default) and then with --worker-relay false, one after the other;
# ROUNDS (default 1) repeats that pair, interleaved (the machine's speed moves); then (SPREAD=0 skips it) the default once more with perf_analyzer's gRPC client opening one
# connection per context (TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1; it shares one among 6 by
# default): the gRPC figure when the kernel's placement has as many connections to spread as
# HTTP. Prints each table and the CPU sampled during each run's last entry; leaves them in
# $OUT/relay.txt.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
COMPARE="$CARRY/triton-reference/device/compare.sh"
[ -f "$COMPARE" ] || COMPARE=../shared/triton-reference/device/compare.sh
MATRIX=${MATRIX:-'classify http 16,64 RAW:32; classify grpc 16,64 RAW:32'}
{
  echo "== machine: $(nproc) cores; $(git log --oneline -1 2>/dev/null | cut -c1-72)"
  variants=()
  for round in $(seq "${ROUNDS:-1}"); do
    variants+=("--workers 16" "--workers 16 --worker-relay false")
  done
  [ "${SPREAD:-1}" = 0 ] || variants+=("--workers 16 SPREAD")
  for i in "${!variants[@]}"; do
    variant=${variants[$i]}
    tag=$i${variant//[^a-zA-Z0-9]/_}
    share=6
    case "$variant" in *SPREAD) share=1; variant=${variant% SPREAD};; esac
    TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=$share OUT=/tmp/relay$tag DAGSERVE_ARGS="$variant" bash "$COMPARE" bench/repos/triton_ensemble --parts dagserve \
        --matrix "$MATRIX" > "/tmp/relay$tag.log" 2>&1 || tail -n 20 "/tmp/relay$tag.log"
    echo "== dagserve $variant (perf_analyzer gRPC contexts per connection: $share)"
    grep classify "/tmp/relay$tag/table.txt"
    cat "/tmp/relay$tag/cpu.txt"
  done
} 2>&1 | tee "$OUT/relay.txt"
