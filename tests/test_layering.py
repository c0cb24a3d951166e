"""The layers point inward: the engine and the DSL import no web, gRPC or ML framework."""

from __future__ import annotations

import subprocess
import sys


def test_engine_imports_no_frontend_or_framework() -> None:
    code = (
        "import sys, dagserve.engine, dagserve.dsl, dagserve.backends.python\n"
        "bad = [m for m in ('starlette', 'uvicorn', 'grpc', 'torch', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
