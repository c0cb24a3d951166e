"""A client that goes away (HTTP disconnect, gRPC cancel or deadline) takes its request off
the queue: the model never runs it, and the server goes on serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "slow"


@pytest.fixture
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        yield running


def body(ms: int) -> dict[str, object]:
    return {"inputs": [{"name": "SLEEP_MS", "datatype": "INT32", "shape": [1, 1], "data": [ms]}]}


def occupy(running: RunningServer, ms: int) -> threading.Thread:
    """Keep the only instance busy for ``ms`` from another thread."""
    thread = threading.Thread(
        target=httpx.post, args=(f"http://{running.http_url}/v2/models/slow/infer",), kwargs={"json": body(ms)}
    )
    thread.start()
    time.sleep(0.05)
    return thread


def executions(running: RunningServer) -> int:
    stats = httpx.get(f"http://{running.http_url}/v2/models/slow/stats").json()
    return int(stats["model_stats"][0]["execution_count"])


def test_http_disconnect_removes_queued_request(running: RunningServer) -> None:
    busy = occupy(running, 400)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"http://{running.http_url}/v2/models/slow/infer", json=body(0), timeout=0.1)
    busy.join()
    time.sleep(0.1)
    assert executions(running) == 1
    ok = httpx.post(f"http://{running.http_url}/v2/models/slow/infer", json=body(0))
    assert ok.status_code == 200 and executions(running) == 2


def test_grpc_deadline_removes_queued_request(running: RunningServer) -> None:
    busy = occupy(running, 400)
    client = grpcclient.InferenceServerClient(running.grpc_url)
    x = grpcclient.InferInput("SLEEP_MS", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[0]], np.int32))
    with pytest.raises(Exception, match="Deadline"):
        client.infer("slow", [x], client_timeout=0.1)
    busy.join()
    time.sleep(0.1)
    assert executions(running) == 1
    assert client.infer("slow", [x]).as_numpy("DONE")[0, 0] == 1
    client.close()
