"""A client that goes away (HTTP disconnect, gRPC cancel or deadline) takes its request off
the queue: the model never runs it, and the server goes on serving.

The only instance of the ``slow`` model is held on the ``slow_gate`` fixture, so the second
request is known to be queued (the server counts it in flight) before its client goes away,
and known to be gone (the count drops back) before the instance is released. No step waits on
a sleep."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import FileGate, RunningServer, serve_in_thread, wait_until

REPO = Path(__file__).parents[1] / "repos" / "slow"
HOLD = -1  # SLEEP_MS that holds the model until the gate is released


@pytest.fixture
def running(slow_gate: FileGate) -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        yield running


@pytest.fixture
def client(running: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=60) as client:
        yield client


def body(ms: int) -> dict[str, object]:
    return {"inputs": [{"name": "SLEEP_MS", "datatype": "INT32", "shape": [1, 1], "data": [ms]}]}


def executions(client: httpx.Client) -> int:
    stats = client.get("/v2/models/slow/stats").json()
    return int(stats["model_stats"][0]["execution_count"])


def occupy(
    pool: concurrent.futures.ThreadPoolExecutor, client: httpx.Client, gate: FileGate
) -> concurrent.futures.Future[httpx.Response]:
    """Hold the only instance with a request from another thread; return once it executes."""
    busy = pool.submit(client.post, "/v2/models/slow/infer", json=body(HOLD))
    gate.wait_started()
    return busy


def test_http_disconnect_removes_queued_request(
    running: RunningServer, client: httpx.Client, slow_gate: FileGate
) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            busy = occupy(pool, client, slow_gate)
            payload = json.dumps(body(0)).encode()
            host, port = running.http_url.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(
                    b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                wait_until(lambda: running.in_flight("slow") == 2, what="the second request is queued")
            wait_until(lambda: running.in_flight("slow") == 1, what="the disconnected request left the queue")
        finally:
            slow_gate.release()
        assert busy.result().status_code == 200
    assert executions(client) == 1
    assert client.post("/v2/models/slow/infer", json=body(0)).status_code == 200
    assert executions(client) == 2


def test_grpc_deadline_removes_queued_request(
    running: RunningServer, client: httpx.Client, slow_gate: FileGate
) -> None:
    grpc = grpcclient.InferenceServerClient(running.grpc_url)
    x = grpcclient.InferInput("SLEEP_MS", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[0]], np.int32))
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                busy = occupy(pool, client, slow_gate)
                # The deadline is long enough for the request to reach the queue on a busy
                # machine, and it expires while the instance is still held.
                with pytest.raises(InferenceServerException, match="Deadline"):
                    grpc.infer("slow", [x], client_timeout=3.0)
                wait_until(lambda: running.in_flight("slow") == 1, what="the expired request left the queue")
            finally:
                slow_gate.release()
            assert busy.result().status_code == 200
        assert executions(client) == 1
        assert grpc.infer("slow", [x]).as_numpy("DONE")[0, 0] == 1
        assert executions(client) == 2
    finally:
        grpc.close()


def test_grpc_cancel_removes_queued_request(
    running: RunningServer, client: httpx.Client, slow_gate: FileGate
) -> None:
    """A gRPC call cancelled by its client while queued is dropped the same way."""
    grpc = grpcclient.InferenceServerClient(running.grpc_url)
    x = grpcclient.InferInput("SLEEP_MS", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[0]], np.int32))
    answers: list[object] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                busy = occupy(pool, client, slow_gate)
                call = grpc.async_infer("slow", [x], callback=lambda result, error: answers.append(error or result))
                wait_until(lambda: running.in_flight("slow") == 2, what="the second request is queued")
                call.cancel()
                wait_until(lambda: running.in_flight("slow") == 1, what="the cancelled request left the queue")
            finally:
                slow_gate.release()
            assert busy.result().status_code == 200
        assert executions(client) == 1
        wait_until(lambda: answers, what="the cancelled call's callback")
        assert isinstance(answers[0], InferenceServerException) and "CANCELLED" in str(answers[0])
    finally:
        grpc.close()
