"""Models load in parallel threads; user code that imports one heavy library from several
models at once (here scikit-learn, whose submodules import each other) must load every model,
every time. Before imports and model construction were serialised, 4 of 20 starts left models
FAILED with "cannot import name 'clone' from partially initialized module 'sklearn.base'"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

# Different entry points into the package, imported lazily (in initialize / __init__) and at
# module level: the orders in which two threads can meet inside sklearn's circular imports.
SUBMODULES = (
    "sklearn.linear_model", "sklearn.preprocessing", "sklearn.base", "sklearn.ensemble", "sklearn.utils",
    "sklearn.pipeline", "sklearn.tree", "sklearn.svm", "sklearn.neighbors", "sklearn.model_selection",
)

NATIVE = '''
import importlib


class Model:
    def __init__(self, context):
        importlib.import_module({module!r})

    def infer(self, inputs):
        return {{"Y": inputs["X"]}}
'''

TRITON = '''
import importlib
import {module}
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        importlib.import_module({other!r})

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")]) for r in requests]
'''

CONFIG = """backend: python
inputs: [{name: X, datatype: FP32, shape: [1]}]
outputs: [{name: X, datatype: FP32, shape: [1]}]
"""

START = """
import json, sys
from pathlib import Path
import anyio
from dagserve.engine import Server, ServerOptions

async def main():
    async with Server(ServerOptions(model_repository=Path(sys.argv[1]))) as server:
        print(json.dumps(server.repository_index()))

anyio.run(main)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_twenty_fresh_starts_load_every_model(tmp_path: Path) -> None:
    """A repository of ten models importing scikit-learn, started 20 times in a fresh process
    each (so every start imports it anew), loads all ten models every time."""
    repo = tmp_path / "models"
    for i, module in enumerate(SUBMODULES):
        (repo / f"m{i}" / "1").mkdir(parents=True)
        code = (
            NATIVE.format(module=module) if i % 2 == 0
            else TRITON.format(module=module, other=SUBMODULES[(i + 3) % len(SUBMODULES)])
        )
        (repo / f"m{i}" / "1" / "model.py").write_text(code)
        (repo / f"m{i}" / "config.yaml").write_text(CONFIG)
    failed: list[str] = []
    for batch in range(5):  # four fresh processes at a time: 20 starts in all
        procs = [
            subprocess.Popen([sys.executable, "-c", START, str(repo)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        for n, proc in enumerate(procs):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            index = json.loads(out.strip().splitlines()[-1])
            assert len(index) == 10
            failed += [f"start {4 * batch + n}: {e['name']}: {e['reason']}" for e in index if e["state"] != "READY"]
    assert failed == []
