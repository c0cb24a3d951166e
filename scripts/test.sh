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
# The tests need torch's CPU build only: take it from PyTorch's CPU index (about 200 MB) before
# .[dev] asks for torch, which from PyPI on Linux is the CUDA build (several GB of libraries).
# TORCH_INDEX_URL= (empty) skips this; torch's version is pinned in pyproject.toml's dev extra.
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
if [ -n "$TORCH_INDEX_URL" ] && [ "$(uname -s)" = Linux ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  torch_pin=$(grep -o '"torch==[^"]*"' pyproject.toml | head -n 1 | tr -d '"')
  .venv/bin/pip install -q "${torch_pin:-torch}" --index-url "$TORCH_INDEX_URL"
fi
.venv/bin/pip install -q -e ".[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
exec .venv/bin/python -m pytest "$@"
