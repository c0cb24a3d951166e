#!/usr/bin/env bash
# The 10-minute soak (bench/soak.py) on the GPU machine, whose device tool ends a command after
# 10 minutes: the soak runs in its own process session, started by one command and collected by
# the next (the machine stays warm between two calls made back to back). From the project root:
#   run(command="bash bench/device_soak.sh start", carry=[".device-carry"], timeout_s=600)
#   run(command="bash bench/device_soak.sh wait", timeout_s=600)      # at once after the first
# SOAK_ARGS passes flags to bench/soak.py (default: --duration 600 --clients 4). The log is $OUT/soak.log.
set -uo pipefail
OUT="${OUT:-soak_out}"
mkdir -p "$OUT"
LOG=/tmp/dagserve-soak.log
case "${1:-}" in
  start)
    # What the machine's image lacks, from the carried wheels (docs/gpu.md lists them).
    # wheels/: the project's own (prepare_carry.sh); whl/: tritonclient[http,grpc] and what it adds.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device-carry/wheels/*.whl .device-carry/whl/*.whl || exit 1
    echo "== machine: $(nproc) cores; soak.py ${SOAK_ARGS:---duration 600 --clients 4}"
    PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 setsid nohup \
        python3 bench/soak.py ${SOAK_ARGS:---duration 600 --clients 4} > "$LOG" 2>&1 < /dev/null &
    echo $! > /tmp/dagserve-soak.pid
    # Collect what there is at the end of this command's time; the soak goes on.
    for _ in $(seq "${START_WAIT:-540}"); do
      kill -0 "$(cat /tmp/dagserve-soak.pid)" 2>/dev/null || break
      sleep 1
    done
    cp "$LOG" "$OUT/soak.log"; tail -n 5 "$LOG" ;;
  wait)
    pid=$(cat /tmp/dagserve-soak.pid 2>/dev/null) || { echo "no soak started on this machine"; exit 1; }
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    cp "$LOG" "$OUT/soak.log"; cat "$LOG" ;;
  *) echo "usage: bash bench/device_soak.sh start|wait" >&2; exit 2 ;;
esac
