"""Where Python model code runs: sync code on a worker thread by default, on the event loop only
when configured ``execution: inline``, and never moved from one to the other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dagserve import InferRequest, Server

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


@pytest.mark.parametrize("execution", [None, "auto", "thread"])
async def test_sync_code_runs_off_the_loop_by_default(tmp_path: Path, execution: str | None) -> None:
    """Sync code runs on a worker thread by default (``auto`` and ``thread`` mean the same)."""
    import threading

    loop_thread = threading.get_ident()
    async with Server(model_repository=make_repo(tmp_path, execution)) as server:
        first = await call(server, 0)
        assert first != loop_thread
        assert await call(server, 0) == first  # the instance's own thread, every call


async def test_inline_stays_on_the_loop_after_slow_calls(tmp_path: Path) -> None:
    """``execution: inline`` runs on the loop, and slow calls never move it off (no adaptive flip)."""
    import threading

    loop_thread = threading.get_ident()
    async with Server(model_repository=make_repo(tmp_path, "inline")) as server:
        for ms in (20, 0, 20, 20, 0):  # the old adaptive mode moved it after the second slow call
            assert await call(server, ms) == loop_thread


async def test_slow_inline_call_is_logged_not_moved(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An inline call holding the loop over the threshold is logged once, naming the model."""
    import threading

    loop_thread = threading.get_ident()
    async with Server(model_repository=make_repo(tmp_path, "inline")) as server:
        with caplog.at_level("WARNING", logger="dagserve.engine"):
            await call(server, 30)  # sleeps at least 30 ms: over the 10 ms threshold
            await call(server, 30)
        assert await call(server, 0) == loop_thread
    warnings = [r.getMessage() for r in caplog.records if "held the event loop" in r.getMessage()]
    assert len(warnings) == 1 and "model 'sleepy'" in warnings[0]


async def test_inline_with_blocking_bls_is_refused(tmp_path: Path) -> None:
    """Inline code calling the blocking BLS ``.exec(`` would wait on the loop it holds: refused."""
    make_repo(tmp_path, "inline")
    (tmp_path / "sleepy" / "1" / "model.py").write_text(
        SLEEPY + "\n\ndef unused(request):\n    return request.exec()\n"
    )
    async with Server(model_repository=tmp_path) as server:
        index = {m["name"]: m for m in server.repository_index()}
        assert index["sleepy"]["state"] == "UNAVAILABLE", index
        assert "execution: inline" in index["sleepy"]["reason"]
        assert ".exec(" in index["sleepy"]["reason"]


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


BLOCKING_BLS = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        if False:
            pb_utils.InferenceRequest(model_name="x", inputs=[], requested_output_names=[]).exec()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("THREAD", np.array([threading.get_ident()], np.int64))])
                for _ in requests]
'''


async def test_server_default_inline_runs_models_without_a_choice_on_the_loop(tmp_path: Path) -> None:
    """``python_execution="inline"`` (``--python-execution inline``) moves sync models that set
    no ``execution`` onto the loop; a model that chose ``thread`` keeps its own thread, and one
    whose code calls the blocking BLS ``.exec(`` stays on a thread instead of failing to load."""
    import threading

    make_repo(tmp_path / "plain", None)
    make_repo(tmp_path / "chosen", "thread")
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "plain" / "sleepy").rename(repo / "plain")
    (tmp_path / "chosen" / "sleepy").rename(repo / "chosen")
    (repo / "bls" / "1").mkdir(parents=True)
    (repo / "bls" / "1" / "model.py").write_text(BLOCKING_BLS)
    (repo / "bls" / "config.yaml").write_text(
        "backend: python\ninputs: [{name: MS, datatype: INT32, shape: [1]}]\n"
        "outputs: [{name: THREAD, datatype: INT64, shape: [1]}]\n"
    )
    loop_thread = threading.get_ident()
    request = InferRequest(inputs={"MS": np.array([0], np.int32)})
    async with Server(model_repository=repo, python_execution="inline") as server:
        assert thread_of(await server.infer("plain", "", request)) == loop_thread
        assert thread_of(await server.infer("chosen", "", request)) != loop_thread
        assert thread_of(await server.infer("bls", "", request)) != loop_thread
    async with Server(model_repository=repo) as server:  # the default: every one on a thread
        assert thread_of(await server.infer("plain", "", request)) != loop_thread
