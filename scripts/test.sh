#!/usr/bin/env bash
# Quick start, command 2: install dagserve with its test dependencies into .venv and run the
# whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
exec .venv/bin/python -m pytest "$@"
