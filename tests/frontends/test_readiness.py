"""Readiness and overload over the wire: server and model readiness on HTTP, gRPC and
grpc.health (Check and Watch), --strict-readiness, and a full queue answering 503 / UNAVAILABLE."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve._proto import health_pb2, health_pb2_grpc
from dagserve.testing import RunningServer, serve_in_thread

DEADLINE_S = 60.0

GOOD = '''
import numpy as np


def infer(inputs):
    return {"Y": inputs["X"] + 1}
'''

BROKEN = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights are missing")

    def execute(self, requests):
        return []
'''

# Holds its instance until the test creates release_<T>; announces itself with started_<T>.
GATE = '''
import os
import anyio
import numpy as np

FOLDER = {folder!r}


async def infer(inputs):
    token = int(inputs["T"].reshape(-1)[0])
    open(os.path.join(FOLDER, f"started_{{token}}"), "w").close()
    while not os.path.exists(os.path.join(FOLDER, f"release_{{token}}")):
        await anyio.sleep(0.005)
    return {{"Y": inputs["T"]}}
'''


def _write(repo: Path, name: str, source: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(source)
    (repo / name / "config.yaml").write_text(config)


IO = "inputs: [{name: X, datatype: INT32, shape: [1]}]\noutputs: [{name: Y, datatype: INT32, shape: [1]}]\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    _write(root, "good", GOOD, "backend: python\n" + IO)
    _write(root, "broken", BROKEN, "backend: python\n" + IO)
    return root


def _http_ready(url: str, path: str = "/v2/health/ready") -> int:
    return httpx.get(f"http://{url}{path}", timeout=10).status_code


@pytest.mark.parametrize("strict", [True, False])
def test_server_readiness_follows_strict_readiness(repo: Path, strict: bool) -> None:
    """With a model that failed to load, the server is not ready (HTTP 400, gRPC false, health
    NOT_SERVING) under strict readiness and ready without it; live either way."""
    with serve_in_thread(repo, metrics=False, strict_readiness=strict) as running:
        assert _http_ready(running.http_url, "/v2/health/live") == 200
        assert _http_ready(running.http_url) == (200 if strict is False else 400)
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            assert client.is_server_live()
            assert client.is_server_ready() is (not strict)
        with grpc.insecure_channel(running.grpc_url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
            expected = health_pb2.HealthCheckResponse.NOT_SERVING if strict else health_pb2.HealthCheckResponse.SERVING
            assert status == expected


def test_model_readiness_of_a_failed_and_an_unknown_model(repo: Path) -> None:
    """A failed model is not ready: HTTP 400 naming it, gRPC ready false, health NOT_SERVING;
    the good model is ready everywhere; an unknown model is not ready either (HTTP 400, as Triton's
    core reports an unknown model as not ready)."""
    with serve_in_thread(repo, metrics=False) as running:
        url = running.http_url
        assert _http_ready(url, "/v2/models/good/ready") == 200
        reply = httpx.get(f"http://{url}/v2/models/broken/ready", timeout=10)
        assert reply.status_code == 400
        assert "broken" in reply.json()["error"]
        assert _http_ready(url, "/v2/models/no_such_model/ready") == 400
        with httpclient.InferenceServerClient(url) as client:
            assert client.is_model_ready("good") is True
            assert client.is_model_ready("broken") is False
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            assert client.is_model_ready("good") is True
            assert client.is_model_ready("broken") is False
        with grpc.insecure_channel(running.grpc_url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(service="broken"), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # The failed model's requests fail clearly, and the index says why it failed.
        with httpclient.InferenceServerClient(url) as client:
            index = {m["name"]: m for m in client.get_model_repository_index()}
            assert index["broken"]["state"] == "UNAVAILABLE"
            assert "weights are missing" in index["broken"]["reason"]


def test_health_watch_streams_each_change(repo: Path) -> None:
    """grpc.health Watch on a model sends its status, then each change as it is loaded and unloaded."""
    with serve_in_thread(repo, metrics=False, model_control_mode="explicit") as running, \
            grpc.insecure_channel(running.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stream = health.Watch(health_pb2.HealthCheckRequest(service="good"), timeout=DEADLINE_S)
        statuses: queue.Queue[int] = queue.Queue()

        def read() -> None:
            try:
                for reply in stream:
                    statuses.put(reply.status)
            except grpc.RpcError:
                pass  # cancelled at the end of the test

        reader = threading.Thread(target=read)
        reader.start()
        try:
            Status = health_pb2.HealthCheckResponse
            first = statuses.get(timeout=DEADLINE_S)
            assert first in (Status.SERVICE_UNKNOWN, Status.NOT_SERVING)  # known in the repository, not loaded
            with grpcclient.InferenceServerClient(running.grpc_url) as client:
                client.load_model("good")
                assert statuses.get(timeout=DEADLINE_S) == Status.SERVING
                client.unload_model("good")
                assert statuses.get(timeout=DEADLINE_S) in (Status.SERVICE_UNKNOWN, Status.NOT_SERVING)
        finally:
            stream.cancel()
            reader.join()


# -- overload ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root = tmp_path_factory.mktemp("gated")
    folder = tmp_path_factory.mktemp("signals")
    _write(root, "gate", GATE.format(folder=str(folder)),
           "backend: python\nmax_batch_size: 1\n"
           "dynamic_batching: {default_queue_policy: {max_queue_size: 1}}\n"
           "inputs: [{name: T, datatype: INT32, shape: [1]}]\noutputs: [{name: Y, datatype: INT32, shape: [1]}]\n")
    with serve_in_thread(root, metrics=False) as running:
        yield running, folder


def _wait_for(path: Path, request: concurrent.futures.Future[int]) -> None:
    """Wait until the model announced ``path`` (or ``request`` failed: raise its error)."""
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        if request.done():
            request.result()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.005)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_full_queue_answers_unavailable(gated: tuple[RunningServer, Path], protocol: str) -> None:
    """With the only instance busy and max_queue_size 1, of two more requests exactly one waits
    and the other is refused at once with 503 / UNAVAILABLE naming the model; after the instance
    is freed the waiting one succeeds, and so does a new one. Health stays ready throughout."""
    running, folder = gated
    base = 100 if protocol == "http" else 200
    mod = httpclient if protocol == "http" else grpcclient
    url = running.http_url if protocol == "http" else running.grpc_url

    def call(token: int) -> int:
        with mod.InferenceServerClient(url) as client:
            tensor = mod.InferInput("T", [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[token]], np.int32))
            return int(client.infer("gate", [tensor]).as_numpy("Y")[0][0])

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        busy = pool.submit(call, base)
        _wait_for(folder / f"started_{base}", busy)
        queued = [pool.submit(call, base + 1), pool.submit(call, base + 2)]
        done, _ = concurrent.futures.wait(queued, timeout=DEADLINE_S, return_when=concurrent.futures.FIRST_COMPLETED)
        refused = done.pop()
        with pytest.raises(InferenceServerException) as info:
            refused.result()
        expected = "503" if protocol == "http" else "StatusCode.UNAVAILABLE"
        assert info.value.status() == expected
        assert "model 'gate'" in info.value.message() and "queue is full" in info.value.message()
        assert _http_ready(running.http_url) == 200
        waiting = queued[1] if refused is queued[0] else queued[0]
        assert not waiting.done()
        token = base + 1 if waiting is queued[0] else base + 2
        for t in (base, base + 1, base + 2, base + 3):
            (folder / f"release_{t}").touch()
        assert busy.result(timeout=DEADLINE_S) == base
        assert waiting.result(timeout=DEADLINE_S) == token
        assert call(base + 3) == base + 3
