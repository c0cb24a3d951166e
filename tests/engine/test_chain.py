"""Chains: a pipeline request's consecutive steps of sync, thread-executed models run on one
worker thread (one hand-off to the event loop instead of one per step), with the same answers,
statistics, errors, deadlines and blocked-model isolation as step by step."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve import InferRequest, ModelExecutionError, Server
from dagserve.errors import RequestTimeoutError
from dagserve.testing import in_flight, serve_in_thread

GATE = "_dagserve_test_chain_gate"

# X -> Y = X + 1, and the thread the step ran on. Model "b" also acts on X[0]: -1 raises, -2
# blocks until the test's gate opens, -3 takes 0.2 s (past a 50 ms request timeout).
MODEL = f'''
import threading
import time
import numpy as np

NAME = "__NAME__"


def infer(inputs):
    x = inputs["X"]
    if NAME == "b":
        if x[0] == -1:
            raise ValueError("boom")
        if x[0] == -2:
            import {GATE} as gate
            gate.entered.set()
            if not gate.release.wait(120):
                raise RuntimeError("never released")
        if x[0] == -3:
            time.sleep(0.2)
    return {{"Y": x + 1, "T": np.array([threading.get_ident()], np.int64)}}
'''

MEMBER = (
    "backend: python\n"
    "inputs: [{name: X, datatype: INT64, shape: [-1]}]\n"
    "outputs: [{name: Y, datatype: INT64, shape: [-1]}, {name: T, datatype: INT64, shape: [1]}]\n"
)


ABC = """
backend: pipeline
inputs: [{name: X, datatype: INT64, shape: [-1]}]
outputs:
  - {name: Y, datatype: INT64, shape: [-1]}
  - {name: T_a, datatype: INT64, shape: [1]}
  - {name: T_b, datatype: INT64, shape: [1], optional: true}
  - {name: T_c, datatype: INT64, shape: [1]}
pipeline:
  EXTRA
  steps:
    - {name: a, model: a, inputs: {X: X}}
    - {name: b, model: b, inputs: {X: a.Y}, when: "params.skip != true"}
    - {name: c, model: c, inputs: {X: [b.Y, a.Y]}}
  outputs: {Y: c.Y, T_a: a.T, T_b: b.T, T_c: c.T}
"""

AC = """
backend: pipeline
inputs: [{name: X, datatype: INT64, shape: [-1]}]
outputs:
  - {name: Y, datatype: INT64, shape: [-1]}
  - {name: T_a, datatype: INT64, shape: [1]}
  - {name: T_c, datatype: INT64, shape: [1]}
pipeline:
  EXTRA
  steps:
    - {name: a, model: a, inputs: {X: X}}
    - {name: c, model: c, inputs: {X: a.Y}}
  outputs: {Y: c.Y, T_a: a.T, T_c: c.T}
"""


def make_repo(root: Path, *, step_by_step: bool = False) -> Path:
    """Members a, b, c and pipelines abc (a -> b -> c, b skipped with the parameter skip,
    then c reads a's output) and ac (a -> c); with ``step_by_step`` the pipelines set
    ``max_inflight_requests``, which rules chains out."""
    for name in ("a", "b", "c"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MODEL.replace("__NAME__", name))
        (root / name / "config.yaml").write_text(MEMBER)
    extra = "max_inflight_requests: 100" if step_by_step else ""
    for name, text in (("abc", ABC), ("ac", AC)):
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(text.replace("EXTRA", extra))
    return root


@pytest.fixture
def gate() -> Iterator[types.ModuleType]:
    module = types.ModuleType(GATE)
    module.entered = threading.Event()  # type: ignore[attr-defined]
    module.release = threading.Event()  # type: ignore[attr-defined]
    sys.modules[GATE] = module
    try:
        yield module
    finally:
        module.release.set()  # type: ignore[attr-defined]
        del sys.modules[GATE]


def request(*values: int, **parameters: Any) -> InferRequest:
    return InferRequest(inputs={"X": np.array(values, np.int64)}, parameters=parameters)


def thread_names(response: Any, steps: str) -> list[str]:
    names = {t.ident: t.name for t in threading.enumerate()}
    return [names.get(int(response.outputs[f"T_{s}"][0]), "?") for s in steps]


@pytest.mark.anyio
async def test_consecutive_thread_steps_run_on_one_chain_thread(tmp_path: Path) -> None:
    """The three steps of a request run on one chain thread; with chains ruled out
    (``max_inflight_requests``) each runs on its own instance's thread. Same answers."""
    async with Server(model_repository=make_repo(tmp_path / "chained")) as server:
        response = await server.infer("abc", "", request(1, 2))
        assert response.outputs["Y"].tolist() == [4, 5]
        names = thread_names(response, "abc")
        assert names == ["dagserve-abc-chain"] * 3, names
    async with Server(model_repository=make_repo(tmp_path / "plain", step_by_step=True)) as server:
        response = await server.infer("abc", "", request(1, 2))
        assert response.outputs["Y"].tolist() == [4, 5]
        names = thread_names(response, "abc")
        assert names == ["dagserve-a-0", "dagserve-b-0", "dagserve-c-0"], names


def counts(server: Server) -> dict[str, Any]:
    """Every count of the statistics of the members and the pipelines (times vary)."""
    result: dict[str, Any] = {}
    for entry in server.statistics()["model_stats"]:
        inference = entry["inference_stats"]
        result[entry["name"]] = {
            "success": inference["success"]["count"],
            "fail": inference["fail"]["count"],
            "queue": inference["queue"]["count"],
            "compute_infer": inference["compute_infer"]["count"],
            "inference_count": entry["inference_count"],
            "execution_count": entry["execution_count"],
            "batches": [(b["batch_size"], b["compute_infer"]["count"]) for b in entry["batch_stats"]],
            "failure_reasons": entry["failure_reasons"],
            "steps": [
                (s["name"], s["success"]["count"], s["fail"]["count"], s["skipped"]["count"], s["compute_infer"]["count"])
                for s in entry.get("steps", [])
            ],
        }
    return result


async def traffic(server: Server) -> list[str]:
    """Successes, a failing middle step, a request that times out in the middle step, and
    concurrent requests; returns the error messages."""
    messages = []
    for i in range(5):
        assert (await server.infer("abc", "", request(i))).outputs["Y"].tolist() == [i + 3]
        assert (await server.infer("ac", "", request(i))).outputs["Y"].tolist() == [i + 2]
        assert (await server.infer("abc", "", request(i, skip=True))).outputs["Y"].tolist() == [i + 2]
    with pytest.raises(ModelExecutionError) as failed:
        await server.infer("abc", "", request(-2))  # -1 at b (a adds 1): raises
    messages.append(str(failed.value))
    with anyio.fail_after(60), pytest.raises(RequestTimeoutError, match="request timeout") as late:
        await server.infer("abc", "", request(-4, timeout=50_000))  # -3 at b: 0.2 s against 50 ms
    messages.append(str(late.value))
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(server.infer, "abc" if i % 2 else "ac", "", request(i))
    for name in ("a", "b", "c", "abc", "ac"):
        assert in_flight(server, name) == 0
    return messages


@pytest.mark.anyio
async def test_statistics_and_errors_are_those_of_step_by_step(tmp_path: Path) -> None:
    """The same traffic, with chains and step by step, gives the same counts in every
    statistic of members, pipelines and steps, and the same errors."""
    async with Server(model_repository=make_repo(tmp_path / "chained")) as server:
        chained_messages = await traffic(server)
        chained = counts(server)
    async with Server(model_repository=make_repo(tmp_path / "plain", step_by_step=True)) as server:
        plain_messages = await traffic(server)
        plain = counts(server)
    assert chained == plain
    assert chained["b"]["failure_reasons"]["BACKEND"] == 1  # the ValueError
    assert chained["b"]["failure_reasons"]["CANCELED"] == 1  # the step running at the deadline
    assert chained["abc"]["steps"][1][3] == 5  # b skipped
    assert chained["abc"]["steps"][2][1] == 5 + 5 + 10  # c never ran after the failure or the deadline
    for chained_message, plain_message in zip(chained_messages, plain_messages):
        assert chained_message.split("error id")[0] == plain_message.split("error id")[0]
    assert "pipeline 'abc', step 'b' (model 'b')" in chained_messages[0]
    assert "ValueError: boom" in chained_messages[0]


@pytest.mark.anyio
async def test_skipped_step_is_counted(tmp_path: Path) -> None:
    """A step skipped by its ``when`` inside a chain is counted as skipped, as step by step."""
    async with Server(model_repository=make_repo(tmp_path)) as server:
        response = await server.infer("abc", "", request(1, skip=True))
        assert response.outputs["Y"].tolist() == [3] and "T_b" not in response.outputs
        assert thread_names(response, "ac") == ["dagserve-abc-chain"] * 2
        assert (await server.infer("abc", "", request(1))).outputs["Y"].tolist() == [4]
        steps = server.statistics("abc")["model_stats"][0]["steps"]
        assert [(s["success"]["count"], s["skipped"]["count"]) for s in steps] == [(2, 0), (1, 1), (2, 0)]


def http_infer(url: str, model: str, value: int, **parameters: Any) -> list[int]:
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    x = httpclient.InferInput("X", [1], "INT64")
    x.set_data_from_numpy(np.array([value], np.int64))
    return client.infer(model, [x], parameters=parameters or None).as_numpy("Y").tolist()  # type: ignore[no-any-return]


def test_blocked_step_in_a_chain_holds_only_its_model(tmp_path: Path, gate: types.ModuleType) -> None:
    """While a chain is stuck in model b: health, metrics, another pipeline and a request of
    the same pipeline that skips b answer (the latter on a spare chain thread); a second
    request reaching b waits for b's instance, and both finish once b returns."""
    with serve_in_thread(make_repo(tmp_path), grpc=False) as running, ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(http_infer, running.http_url, "abc", -3)  # -2 at b (a adds 1): blocks
        assert gate.entered.wait(60), "model b was never called"
        behind = pool.submit(http_infer, running.http_url, "abc", 5)
        base = f"http://{running.http_url}"
        with httpx.Client(timeout=30) as http:
            assert http.get(f"{base}/v2/health/ready").status_code == 200
            metrics = http.get(f"http://{running.metrics_url}/metrics")
            assert metrics.status_code == 200 and "nv_inference_request_success" in metrics.text
        for i in range(5):
            assert http_infer(running.http_url, "ac", i) == [i + 2]
            assert http_infer(running.http_url, "abc", i, skip=True) == [i + 2]
        assert not stuck.done() and not behind.done()
        gate.release.set()
        assert stuck.result(timeout=60) == [0]
        assert behind.result(timeout=60) == [8]


@pytest.mark.anyio
async def test_a_step_that_cannot_chain_ends_the_chain(tmp_path: Path) -> None:
    """A member that runs on the event loop (``execution: inline``) is no part of a chain:
    the steps before it and after it run step by step, each on its own instance's thread."""
    make_repo(tmp_path)
    (tmp_path / "b" / "config.yaml").write_text(MEMBER + "parameters: {execution: inline}\n")
    async with Server(model_repository=tmp_path) as server:
        response = await server.infer("abc", "", request(1))
        assert response.outputs["Y"].tolist() == [4]
        names = thread_names(response, "abc")
        assert names == ["dagserve-a-0", threading.current_thread().name, "dagserve-c-0"], names


def test_a_chain_is_stuck_when_it_blocks_not_when_it_waits_for_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    """The main chain thread's current chain counts as stuck after CHAIN_WAIT only if the
    process was mostly idle meanwhile (its step blocks: sleep, I/O); in a busy process it may
    be waiting its turn for the GIL, and only CHAIN_LONG makes it stuck."""
    import time

    from dagserve.engine import chain

    workers = chain.ChainWorkers("p")
    assert not workers.stuck()  # no chain running
    workers.main_cpu_since = time.process_time_ns()
    workers.main_since = time.perf_counter_ns() - 5 * 10**6  # began 5 ms ago
    assert workers.stuck(), "5 ms with the process idle: blocked"
    # The same age while the process was busy (it used far more CPU than the chain's age).
    monkeypatch.setattr(chain, "_CHAIN_LONG_NS", 3600 * 10**9)
    workers.main_cpu_since = time.process_time_ns() - 10 * 10**9
    assert not workers.stuck(), "busy: waiting for the GIL, not stuck before CHAIN_LONG"
    monkeypatch.setattr(chain, "_CHAIN_LONG_NS", 10**6)  # 1 ms: the 5-ms-old chain is past it
    assert workers.stuck(), "past CHAIN_LONG: stuck however busy"
