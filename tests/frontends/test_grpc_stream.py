"""ModelStreamInfer: responses leave in completion order, not request order, and a stream holds
at most STREAM_MAX_IN_FLIGHT requests in processing (the rest wait unread, pushed back by gRPC
flow control)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dagserve.frontends import grpc as grpc_frontend
from dagserve.testing import RunningServer, serve_in_thread

DEADLINE_S = 60.0

# Holds its instance until the test creates release_<T>; announces itself with started_<T>.
GATE = '''
import os
import anyio

FOLDER = {folder!r}


async def infer(inputs):
    token = int(inputs["T"].reshape(-1)[0])
    open(os.path.join(FOLDER, f"started_{{token}}"), "w").close()
    while not os.path.exists(os.path.join(FOLDER, f"release_{{token}}")):
        await anyio.sleep(0.005)
    return {{"Y": inputs["T"]}}
'''

IO = "inputs: [{name: T, datatype: INT32, shape: [1]}]\noutputs: [{name: Y, datatype: INT32, shape: [1]}]\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path_factory.mktemp("repo")
    folder = tmp_path_factory.mktemp("signals")
    (repo / "gate" / "1").mkdir(parents=True)
    (repo / "gate" / "1" / "model.py").write_text(GATE.format(folder=str(folder)))
    # Several instances, so that held requests do not queue behind each other in the model.
    (repo / "gate" / "config.yaml").write_text("backend: python\ninstance_group: [{count: 4}]\n" + IO)
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "1" / "model.py").write_text("def infer(inputs):\n    return {'Y': inputs['T']}\n")
    (repo / "echo" / "config.yaml").write_text("backend: python\n" + IO)
    with serve_in_thread(repo, http=False, metrics=False) as running:
        yield running, folder


def _request(model: str, token: int) -> dict[str, Any]:
    tensor = grpcclient.InferInput("T", [1], "INT32")
    tensor.set_data_from_numpy(np.array([token], np.int32))
    return {"model_name": model, "inputs": [tensor], "request_id": f"{model}-{token}"}


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.005)


class _Stream:
    """One ModelStreamInfer stream; ``next()`` returns the next response's id (or raises its error)."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, token: int) -> None:
        self.client.async_stream_infer(**_request(model, token))

    def next(self) -> str:
        result, error = self.results.get(timeout=DEADLINE_S)
        assert error is None, error
        return str(result.get_response().id)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def test_responses_leave_in_completion_order(served: tuple[RunningServer, Path]) -> None:
    """A held request sent first is answered after a quick one sent after it, on the same stream."""
    running, folder = served
    stream = _Stream(running.grpc_url)
    try:
        stream.send("gate", 1)
        _wait_for(folder / "started_1")
        stream.send("echo", 2)
        assert stream.next() == "echo-2"
        (folder / "release_1").touch()
        assert stream.next() == "gate-1"
    finally:
        stream.close()


def test_stream_in_flight_limit(served: tuple[RunningServer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With STREAM_MAX_IN_FLIGHT 2, a third request on the stream is not processed while two are
    held; it starts as soon as one of them ends, and all three are answered."""
    running, folder = served
    monkeypatch.setattr(grpc_frontend, "STREAM_MAX_IN_FLIGHT", 2)
    stream = _Stream(running.grpc_url)
    try:
        for token in (11, 12, 13):
            stream.send("gate", token)
        _wait_for(folder / "started_11")
        _wait_for(folder / "started_12")
        # A negative: give the third request a fair chance to (wrongly) start. This cannot make
        # the test fail on a slow machine, only pass when it should not.
        watch_until = time.monotonic() + 0.5
        while time.monotonic() < watch_until:
            assert not (folder / "started_13").exists(), "a third request ran past the in-flight limit"
            time.sleep(0.01)
        (folder / "release_11").touch()
        assert stream.next() == "gate-11"
        _wait_for(folder / "started_13")
        (folder / "release_12").touch()
        (folder / "release_13").touch()
        assert {stream.next(), stream.next()} == {"gate-12", "gate-13"}
    finally:
        stream.close()
