#!/usr/bin/env bash
# Run the test suite (or any command) while CPU burners occupy every core, to prove that the
# tests wait on events and generous deadlines rather than on timing.
#
#   scripts/busy.sh                          # scripts/test.sh under 2 burners
#   scripts/busy.sh tests/engine -x          # extra arguments go to scripts/test.sh (pytest)
#   scripts/busy.sh --repeat 5               # 5 runs in a row, stop at the first failure
#   scripts/busy.sh -- PYTHONPATH=$PWD .venv/bin/python -m pytest -q   # any command after --
#
# BURNERS (default 2) sets how many `python3 -c "while True: pass"` processes run. The burners
# are killed however the script ends; it exits with the command's status.
set -euo pipefail
cd "$(dirname "$0")/.."

repeat=1
if [ "${1:-}" = "--repeat" ]; then
  repeat=${2:?--repeat needs a count}
  shift 2
fi
if [ "${1:-}" = "--" ]; then
  shift
  [ $# -gt 0 ] || { echo "busy.sh: no command after --" >&2; exit 2; }
  command=(env "$@")
else
  command=(scripts/test.sh "$@")
fi

burners=()
stop_burners() {
  for pid in "${burners[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${burners[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  burners=()
}
trap stop_burners EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq "${BURNERS:-2}"); do
  python3 -c "while True: pass" &
  burners+=("$!")
done
echo "busy.sh: ${#burners[@]} CPU burners running (pids ${burners[*]})" >&2

for run in $(seq "$repeat"); do
  echo "busy.sh: run $run of $repeat: ${command[*]}" >&2
  status=0
  "${command[@]}" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "busy.sh: run $run of $repeat failed (exit $status)" >&2
    exit "$status"
  fi
done
echo "busy.sh: $repeat run(s) passed" >&2
