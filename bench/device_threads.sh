#!/usr/bin/env bash
# Where the workers' time goes, HTTP against gRPC at one concurrency, on the GPU machine's 16
# cores, through the device tool, from the project root:
#   run(command="bash bench/device_threads.sh", carry=[".device-carry/wheels",
#       ".device-carry/perf_analyzer-2.60.0-py3-none-manylinux_2_38_x86_64.whl",
#       ".device-carry/triton-reference", ".tools"], timeout_s=300)
# Serves bench/repos/triton_ensemble with --workers 16 (DAGSERVE_ARGS adds flags; default
# --worker-relay false), drives it with perf_analyzer at c$CONCURRENCY (64) over HTTP, then over
# gRPC with one connection per context (so both spread alike over the workers), and during each
# samples every worker thread's CPU and context switches from /proc over 3 s; with .tools/py-spy
# carried (a static binary) it also records one worker's stacks (--idle --native). Leaves
# threads_{http,grpc}.txt, pa_*.txt and spy_*.txt in $OUT. Elsewhere: PERF_ANALYZER and
# DAGSERVE_PYTHON as for compare.sh.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
WORK=${COMPARE_WORK:-/tmp/dagserve-compare}
C=${CONCURRENCY:-64}
OUT=/tmp/threads_setup bash "$CARRY/triton-reference/device/compare.sh" bench/repos/triton_ensemble --parts dagserve \
    --matrix 'classify http 1 RAW:32' --window-ms 500 --max-trials 3 > /tmp/threads_setup.log 2>&1 \
    || { tail -n 20 /tmp/threads_setup.log; exit 1; }
PA=${PERF_ANALYZER:-$WORK/pa/perf_analyzer/bin/perf_analyzer}
# shellcheck disable=SC2086
PYTHONPATH="$PWD:$WORK/site" "${DAGSERVE_PYTHON:-python3}" -m dagserve.cli serve --model-repository "$WORK/repository" --host 127.0.0.1 \
    --http-port 18100 --grpc-port 18101 --metrics-port 18102 --log-level warning --workers 16 \
    ${DAGSERVE_ARGS:---worker-relay false} > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER' EXIT
for _ in $(seq 600); do curl -sf 127.0.0.1:18100/v2/health/ready >/dev/null && break; sleep 0.2; done

threads() {  # SECONDS REQUESTS_PER_S: per worker, each thread's cores and switches per request
  python3 - "$SERVER" "$@" <<'PY'
import os, sys, time
server, seconds = int(sys.argv[1]), float(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
workers = [int(p) for p in open(f"/proc/{server}/task/{server}/children").read().split()]
def snap():
    out = {}
    for w in workers:
        for tid in os.listdir(f"/proc/{w}/task"):
            try:
                stat = open(f"/proc/{w}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                status = dict(l.split(":\t") for l in open(f"/proc/{w}/task/{tid}/status").read().splitlines() if ":\t" in l)
            except OSError:
                continue
            out[(w, int(tid))] = (int(stat[11]) + int(stat[12]), int(status["voluntary_ctxt_switches"]),
                                  int(status["nonvoluntary_ctxt_switches"]))
    return out
a = snap(); time.sleep(seconds); b = snap()
rows = []
for key, (cpu, vol, inv) in b.items():
    if key in a:
        c0, v0, i0 = a[key]
        rows.append((key, (cpu - c0) / tick / seconds, vol - v0, inv - i0))
main = [r for r in rows if r[0][0] == r[0][1]]
others = [r for r in rows if r[0][0] != r[0][1]]
print(f"{len(workers)} workers over {seconds:g} s: all threads {sum(r[1] for r in rows):.2f} cores")
print(f"  main threads (the event loop): {sum(r[1] for r in main):.2f} cores, busiest {max(r[1] for r in main):.2f}, "
      f"voluntary switches {sum(r[2] for r in main)}, involuntary {sum(r[3] for r in main)}")
busy = sorted(others, key=lambda r: -r[1])
print(f"  other threads: {sum(r[1] for r in others):.2f} cores; the 12 busiest (worker pid/tid cores vol invol):")
for (w, t), cores, vol, inv in busy[:12]:
    print(f"    {w}/{t} {cores:.2f} {vol} {inv}")
PY
}

for proto in http grpc; do
  port=18100; [ "$proto" = grpc ] && port=18101
  TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1 "$PA" -m classify -u "127.0.0.1:$port" -i "$proto" --shape RAW:32 \
      --concurrency-range "$C" -p 4000 --max-trials 4 --stability-percentage 100 > "$OUT/pa_$proto.txt" 2>&1 &
  pa=$!
  sleep 4
  { echo "== $proto c$C"; threads 3; } | tee "$OUT/threads_$proto.txt"
  worker=$(cut -d' ' -f1 "/proc/$SERVER/task/$SERVER/children")
  if [ -x .tools/py-spy ]; then
    .tools/py-spy record -p "$worker" -d 4 -r 100 --idle --native -f raw -o "$OUT/spy_$proto.txt" \
        > "$OUT/spy_$proto.log" 2>&1 || tail -n 3 "$OUT/spy_$proto.log"
  fi
  wait "$pa"
  grep "^Concurrency" "$OUT/pa_$proto.txt"
done
