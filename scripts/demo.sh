#!/usr/bin/env bash
# Quick start, command 1: install dagserve into .venv, serve examples/pipelines/, answer one
# request per example with curl, then keep serving until Ctrl-C.
#
#   scripts/demo.sh           serve and keep serving (Ctrl-C stops it)
#   scripts/demo.sh --once    answer the example requests, then stop (used by the tests)
#
# Env: PYTHON (default python3), DAGSERVE_HTTP_PORT (default 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PORT=${DAGSERVE_HTTP_PORT:-8000}

if [ ! -x .venv/bin/dagserve ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e . 2> >(grep -v "is ignored: it is neither" >&2)

.venv/bin/dagserve serve --model-repository examples/pipelines --http-port "$PORT" \
    --grpc-port 0 --metrics-port 0 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT

for _ in $(seq 1 300); do   # wait up to 30 s for the models to load
  curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "dagserve exited during startup" >&2; exit 1; }
  sleep 0.1
done

for request in examples/requests/*.json; do
  model=$(basename "$request" .json)
  echo "== POST /v2/models/$model/infer  ($request)"
  curl -sf -X POST "http://127.0.0.1:$PORT/v2/models/$model/infer" \
       -H 'Content-Type: application/json' --data @"$request"
  echo
done

if [ "${1:-}" = "--once" ]; then exit 0; fi
echo "serving examples/pipelines on http://127.0.0.1:$PORT (Ctrl-C to stop)"
wait $SERVER
