#!/usr/bin/env bash
# Quick start, command 1: install dagserve into .venv, serve examples/pipelines/, answer one
# request per example with curl, then keep serving until Ctrl-C.
#
#   scripts/demo.sh           serve and keep serving (Ctrl-C stops it)
#   scripts/demo.sh --once    answer the example requests, then stop (used by the tests)
#
# Env: PYTHON (default python3), DAGSERVE_HTTP_PORT (default 8000), DAGSERVE (a dagserve
# command to use instead of installing one into .venv).
#
# The requests go only to the server this script started: it waits for that server's own
# "HTTP service listening on ..." line (printed once its socket is bound, which fails while
# another process holds the port), and checks before each request that the server still runs.
# A busy port makes dagserve exit at once, naming the port, before any model loads.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PORT=${DAGSERVE_HTTP_PORT:-8000}

if [ -z "${DAGSERVE:-}" ]; then
  if [ ! -x .venv/bin/dagserve ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
  fi
  .venv/bin/pip install -q -e . 2> >(grep -v "is ignored: it is neither" >&2)
  DAGSERVE=.venv/bin/dagserve
fi

LOG=$(mktemp "${TMPDIR:-/tmp}/dagserve-demo.XXXXXX")
"$DAGSERVE" serve --model-repository examples/pipelines --http-port "$PORT" \
    --grpc-port 0 --metrics-port 0 > >(tee "$LOG") 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -f "$LOG"' EXIT

alive() { kill -0 "$SERVER" 2>/dev/null; }
URL=
for _ in $(seq 1 1200); do   # wait up to 120 s for the models to load and the port to be bound
  alive || { echo "demo: dagserve (pid $SERVER) exited during startup; see its message above (DAGSERVE_HTTP_PORT=N serves the demo on port N)" >&2; exit 1; }
  URL=$(sed -n 's|^HTTP service listening on \(http://[^ ]*\).*|\1|p;T;q' "$LOG")
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "demo: dagserve (pid $SERVER) did not start listening within 120 s" >&2; exit 1; }
curl -sf --retry 50 --retry-delay 0 --retry-connrefused -o /dev/null "$URL/v2/health/ready" \
  || echo "demo: $URL is not ready (a model failed to load?); the requests below may fail" >&2

for request in examples/requests/*.json; do
  model=$(basename "$request" .json)
  alive || { echo "demo: dagserve (pid $SERVER) has exited" >&2; exit 1; }
  echo "== POST /v2/models/$model/infer  ($request)"
  curl -sf -X POST "$URL/v2/models/$model/infer" \
       -H 'Content-Type: application/json' --data @"$request"
  echo
done

if [ "${1:-}" = "--once" ]; then exit 0; fi
echo "serving examples/pipelines on $URL (pid $SERVER; Ctrl-C to stop)"
wait $SERVER
