"""Where Python model code runs: on the event loop, or moved to a worker thread when it blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dagserve import InferRequest, Server
from dagserve.engine import instances

pytestmark = pytest.mark.anyio

SLEEPY = '''
import threading
import time
import numpy as np

def infer(inputs):
    if inputs["MS"][0] > 0:
        time.sleep(float(inputs["MS"][0]) / 1000)
    return {"THREAD": np.array([threading.get_ident()], np.int64)}
'''


def make_repo(tmp_path: Path, execution: str | None) -> Path:
    model = tmp_path / "sleepy"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(SLEEPY)
    params = f"parameters: {{execution: {execution}}}\n" if execution else ""
    (model / "config.yaml").write_text(
        "backend: python\n" + params
        + "inputs: [{name: MS, datatype: INT32, shape: [1]}]\n"
        + "outputs: [{name: THREAD, datatype: INT64, shape: [1]}]\n"
    )
    return tmp_path


def thread_of(response: object) -> int:
    return int(response.outputs["THREAD"][0])  # type: ignore[attr-defined]


async def call(server: Server, ms: int) -> int:
    return thread_of(await server.infer("sleepy", "", InferRequest(inputs={"MS": np.array([ms], np.int32)})))


async def test_auto_runs_on_the_loop_until_a_call_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adaptive instance stays on the event loop until a call (after its first) goes over
    the inline budget; then it runs in a worker thread. The budget is raised to 0.3 s here so
    that a fast call on a busy machine never goes over it, and a slow one always does."""
    import threading

    monkeypatch.setattr(instances, "INLINE_BUDGET_NS", 300_000_000)
    slow = 400
    loop_thread = threading.get_ident()
    async with Server(model_repository=make_repo(tmp_path, None)) as server:
        assert await call(server, slow) == loop_thread  # a first call may be slow (imports, caches)
        assert await call(server, 0) == loop_thread
        assert await call(server, slow) == loop_thread  # this call is over budget...
        assert await call(server, 0) != loop_thread  # ...so later calls run in a thread


@pytest.mark.parametrize(("execution", "on_loop"), [("inline", True), ("thread", False)])
async def test_explicit_modes_stay(tmp_path: Path, execution: str, on_loop: bool) -> None:
    import threading

    loop_thread = threading.get_ident()
    async with Server(model_repository=make_repo(tmp_path, execution)) as server:
        await call(server, 20)
        assert (await call(server, 0) == loop_thread) is on_loop


async def test_models_with_same_named_helpers_keep_their_own(tmp_path: Path) -> None:
    """Two models importing a helper module of the same name each get the one beside them."""
    for name, value in (("first", 1), ("second", 2)):
        version = tmp_path / name / "1"
        version.mkdir(parents=True)
        (version / "helper.py").write_text(f"VALUE = {value}\n")
        (version / "model.py").write_text(
            "import numpy as np\nimport helper\n\n"
            "def infer(inputs):\n    return {'Y': np.array([helper.VALUE], np.int32)}\n"
        )
        (tmp_path / name / "config.yaml").write_text(
            "backend: python\ninputs: [{name: X, datatype: INT32, shape: [1]}]\n"
            "outputs: [{name: Y, datatype: INT32, shape: [1]}]\n"
        )
    async with Server(model_repository=tmp_path) as server:
        x = InferRequest(inputs={"X": np.zeros(1, np.int32)})
        assert (await server.infer("first", "", x)).outputs["Y"][0] == 1
        assert (await server.infer("second", "", x)).outputs["Y"][0] == 2
