"""``backend: remote``: a gateway server whose pipeline step is a model on another dagserve
server (tests/repos/remote), called over HTTP and gRPC with the real tritonclient."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.engine import ServerOptions
from dagserve.frontends.runner import FrontendOptions, serve
from dagserve.testing import FileGate, RunningServer, serve_in_thread, wait_until

REMOTE_REPO = Path(__file__).parents[1] / "repos" / "remote"

ADD1 = "def infer(inputs):\n    return {'Y': inputs['X'] + 1}\n"


@pytest.fixture(scope="module")
def remote() -> Iterator[RunningServer]:
    with serve_in_thread(REMOTE_REPO) as running:
        yield running


def _url(running: RunningServer, scheme: str) -> str:
    return f"{scheme}://{running.http_url if scheme == 'http' else running.grpc_url}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _remote_model(repo: Path, name: str, urls: list[str], model_name: str, *, extra: str = "",
                  tensors: str = "") -> None:
    tensors = tensors or """
        inputs: [{name: X, datatype: FP32, shape: [-1]}]
        outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
    url_list = ", ".join(urls)
    head = textwrap.dedent(f"""
        backend: remote
        max_batch_size: 8
        remote: {{url: [{url_list}], model_name: {model_name}, health_interval_ms: 100{extra}}}
    """)
    _write(repo / name / "config.yaml", head + textwrap.dedent(tensors))


def _gateway(repo: Path, urls: list[str], *, extra: str = "") -> Path:
    """A gateway repository: rscale (remote scale), add1 (local), pipe = add1(rscale(X)),
    and rslow (remote slow)."""
    _remote_model(repo, "rscale", urls, "scale", extra=extra)
    _remote_model(repo, "rslow", urls, "slow", extra=extra, tensors="""
        inputs: [{name: SLEEP_MS, datatype: INT32, shape: [1]}]
        outputs: [{name: DONE, datatype: INT32, shape: [1]}]
    """)
    _write(repo / "add1" / "config.yaml", """
        backend: python
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [-1]}]
        outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """)
    _write(repo / "add1" / "1" / "model.py", ADD1)
    _write(repo / "pipe" / "config.yaml", """
        backend: pipeline
        max_batch_size: 8
        inputs: [{name: X, datatype: FP32, shape: [-1]}]
        outputs: [{name: Z, datatype: FP32, shape: [-1]}]
        pipeline:
          steps:
            - model: rscale
              inputs: {X: X}
            - model: add1
              inputs: {X: rscale.Y}
          outputs: {Z: add1.Y}
    """)
    return repo


def _http_infer(running: RunningServer, model: str, x: np.ndarray, name: str = "X", out: str = "Z") -> np.ndarray:
    client = httpclient.InferenceServerClient(running.http_url)
    tensor = httpclient.InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor])
    return result.as_numpy(out)


def _index(running: RunningServer) -> dict[str, dict[str, str]]:
    reply = httpx.post(f"http://{running.http_url}/v2/repository/index", json={}, timeout=30)
    return {m["name"]: m for m in reply.json()}


@contextlib.contextmanager
def _serve_on_port(repository: Path, http_port: int) -> Iterator[RunningServer]:
    """Like serve_in_thread, but HTTP on a given port (a remote that comes up where the
    gateway already looks for it)."""
    options = FrontendOptions(server=ServerOptions(model_repository=repository), http_port=http_port,
                           grpc_port=None, metrics_port=None)
    with anyio.from_thread.start_blocking_portal() as portal:
        future, (server, addresses) = portal.start_task(functools.partial(serve, options))
        try:
            yield RunningServer(server, addresses, portal)
        finally:
            future.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError):
                future.result()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_pipeline_with_a_remote_step_answers(remote: RunningServer, tmp_path: Path, scheme: str) -> None:
    """A pipeline whose first step runs on another server answers over HTTP and gRPC; the
    remote model counts like a model in the gateway's nv_inference_* metrics."""
    repo = _gateway(tmp_path / "gw", [_url(remote, scheme)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with serve_in_thread(repo) as gateway:
        np.testing.assert_array_equal(_http_infer(gateway, "pipe", x), x * 2 + 1)
        client = grpcclient.InferenceServerClient(gateway.grpc_url)
        tensor = grpcclient.InferInput("X", [2, 3], "FP32")
        tensor.set_data_from_numpy(x + 10)
        np.testing.assert_array_equal(client.infer("pipe", [tensor]).as_numpy("Z"), (x + 10) * 2 + 1)
        client.close()
        metrics = httpx.get(f"http://{gateway.metrics_url}/metrics", timeout=30).text
        line = next(m for m in metrics.splitlines()
                    if m.startswith("nv_inference_request_success{") and 'model="rscale"' in m)
        assert float(line.rsplit(" ", 1)[1]) == 2
        series = f'dagserve_remote_round_trip_success{{model="rscale",version="1",endpoint="{_url(remote, scheme)}"}}'
        assert f"{series} 2" in metrics.splitlines()  # integers as prometheus-cpp writes them


def test_metadata_mismatch_fails_the_load_naming_the_tensor(remote: RunningServer, tmp_path: Path) -> None:
    """A remote model in FP16 where the config says FP32 fails the load: the reason names the
    file, the model, the tensor, and both datatypes."""
    repo = tmp_path / "gw"
    _remote_model(repo, "rhalf", [_url(remote, "http")], "half")
    with serve_in_thread(repo) as gateway:
        entry = _index(gateway)["rhalf"]
        assert entry["state"] == "UNAVAILABLE"
        reason = entry["reason"]
        assert str(repo / "rhalf" / "config.yaml") in reason
        assert "rhalf" in reason and "input 'X'" in reason
        assert "expected FP32 [-1, -1]" in reason and "remote has FP16 [-1, -1]" in reason


def test_unreachable_remote_is_not_ready_then_recovers(tmp_path: Path) -> None:
    """With its remote down the node and its pipeline are not ready, a request gets 503 naming
    the node and the endpoint; once the remote comes up, both become ready on their own."""
    holder = socket.socket()  # bound, not listening: connections are refused
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    repo = _gateway(tmp_path / "gw", [url])
    with serve_in_thread(repo) as gateway:
        client = httpclient.InferenceServerClient(gateway.http_url)
        assert not client.is_model_ready("rscale")
        assert not client.is_model_ready("pipe")
        reason = _index(gateway)["rscale"]["reason"]
        assert "rscale" in reason and url in reason
        x = np.ones((1, 2), dtype=np.float32)
        for model, out in (("pipe", "Z"), ("rscale", "Y")):
            with pytest.raises(InferenceServerException) as failure:
                _http_infer(gateway, model, x, out=out)
            assert failure.value.status() == "503"
            assert "rscale" in failure.value.message() and url in failure.value.message()
        holder.close()
        with _serve_on_port(REMOTE_REPO, port):
            wait_until(lambda: client.is_model_ready("pipe"), timeout=60, what="the pipeline became ready")
            np.testing.assert_array_equal(_http_infer(gateway, "pipe", x), x * 2 + 1)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_remote_4xx_is_400_with_its_message(remote: RunningServer, tmp_path: Path, scheme: str) -> None:
    """A request the remote refuses (4 rows; it takes at most 2) is a 400 carrying the
    remote's own message."""
    repo = _gateway(tmp_path / "gw", [_url(remote, scheme)])
    with serve_in_thread(repo) as gateway:
        with pytest.raises(InferenceServerException) as failure:
            _http_infer(gateway, "pipe", np.ones((4, 2), dtype=np.float32))
        assert failure.value.status() == "400"
        assert "max_batch_size 2" in failure.value.message()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_remote_past_its_timeout_is_504_and_cancelled_there(
    remote: RunningServer, tmp_path: Path, slow_gate: FileGate, scheme: str
) -> None:
    """A remote call past timeout_ms fails with 504 naming the node, and the remote's request
    is cancelled (nothing left in flight there while its model still holds)."""
    repo = _gateway(tmp_path / "gw", [_url(remote, scheme)], extra=", timeout_ms: 300")
    with serve_in_thread(repo) as gateway:
        with pytest.raises(InferenceServerException) as failure:
            _http_infer(gateway, "rslow", np.array([[-1]], dtype=np.int32), name="SLEEP_MS", out="DONE")
        assert failure.value.status() == "504"
        assert "rslow" in failure.value.message() and "300 ms" in failure.value.message()
        wait_until(lambda: remote.in_flight("slow") == 0, timeout=60, what="the remote request was cancelled")
        assert not (slow_gate.path / "release").exists()


def test_round_robin_over_two_remotes(remote: RunningServer, tmp_path: Path) -> None:
    """With two URLs, requests go to both servers, and answers stay correct."""
    with serve_in_thread(REMOTE_REPO) as second:
        before = [_successes(r) for r in (remote, second)]
        repo = _gateway(tmp_path / "gw", [_url(remote, "http"), _url(second, "grpc")])
        with serve_in_thread(repo) as gateway:
            for i in range(8):
                x = np.full((1, 2), i, dtype=np.float32)
                np.testing.assert_array_equal(_http_infer(gateway, "pipe", x), x * 2 + 1)
        after = [_successes(r) for r in (remote, second)]
    assert after[0] - before[0] == 4 and after[1] - before[1] == 4


def _successes(running: RunningServer) -> int:
    stats = httpclient.InferenceServerClient(running.http_url).get_inference_statistics("scale")
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_client_disconnect_cancels_the_remote_call(
    remote: RunningServer, tmp_path: Path, slow_gate: FileGate, scheme: str
) -> None:
    """A client that goes away while the remote model holds cancels the gateway's call, and
    with it the remote's request (in flight there drops to 0 while the model still holds)."""
    repo = _gateway(tmp_path / "gw", [_url(remote, scheme)])
    with serve_in_thread(repo) as gateway:
        body = b'{"inputs":[{"name":"SLEEP_MS","datatype":"INT32","shape":[1,1],"data":[-1]}]}'
        host, port = gateway.http_url.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(b"POST /v2/models/rslow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            slow_gate.wait_started()
            wait_until(lambda: remote.in_flight("slow") == 1, timeout=60, what="the remote request is in flight")
        wait_until(lambda: gateway.in_flight("rslow") == 0, timeout=60, what="the gateway call was cancelled")
        wait_until(lambda: remote.in_flight("slow") == 0, timeout=60, what="the remote request was cancelled")
        assert not (slow_gate.path / "release").exists()


def test_pbtxt_parameters_and_an_unreachable_endpoint_skipped(remote: RunningServer, tmp_path: Path) -> None:
    """Configured Triton style (config.pbtxt parameters, comma-separated URLs) with one
    endpoint refusing connections: the model is ready and every request is answered by the
    reachable one."""
    holder = socket.socket()  # bound, not listening: connections are refused
    holder.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{holder.getsockname()[1]}"
    repo = tmp_path / "gw"
    _write(repo / "rscale" / "config.pbtxt", f"""
        backend: "remote"
        max_batch_size: 8
        input [{{ name: "X" data_type: TYPE_FP32 dims: [-1] }}]
        output [{{ name: "Y" data_type: TYPE_FP32 dims: [-1] }}]
        parameters {{ key: "url" value {{ string_value: "{refused},{_url(remote, 'grpc')}" }} }}
        parameters {{ key: "model_name" value {{ string_value: "scale" }} }}
    """)
    before = _successes(remote)
    with holder, serve_in_thread(repo) as gateway:
        assert httpclient.InferenceServerClient(gateway.http_url).is_model_ready("rscale")
        for i in range(6):
            x = np.full((2, 3), i, dtype=np.float32)
            np.testing.assert_array_equal(_http_infer(gateway, "rscale", x, out="Y"), x * 2)
    assert _successes(remote) - before == 6


def test_bad_remote_settings_fail_the_load(tmp_path: Path) -> None:
    """A URL of another scheme, or an unknown key in remote:, fails the load naming the field."""
    repo = tmp_path / "gw"
    _remote_model(repo, "badurl", ["ftp://127.0.0.1:1"], "scale")
    _remote_model(repo, "badkey", ["http://127.0.0.1:1"], "scale", extra=", retry: 3")
    with serve_in_thread(repo) as gateway:
        index = _index(gateway)
        assert "remote.url" in index["badurl"]["reason"] and "http://host:port or grpc://host:port" in index["badurl"]["reason"]
        assert "remote.retry" in index["badkey"]["reason"] and "unknown field" in index["badkey"]["reason"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_request_id_and_parameters_are_forwarded(
    remote: RunningServer, tmp_path: Path, scheme: str
) -> None:
    """The remote sees the caller's request id and its parameters (traceparent, a custom one)."""
    repo = tmp_path / "gw"
    _write(repo / "recho" / "config.yaml", f"""
        backend: remote
        remote: {{url: {_url(remote, scheme)}, model_name: echo}}
        inputs: [{{name: X, datatype: FP32, shape: [-1]}}]
        outputs: [{{name: Y, datatype: FP32, shape: [-1]}}, {{name: PARAMS, datatype: BYTES, shape: [1]}}]
    """)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with serve_in_thread(repo) as gateway:
        client = httpclient.InferenceServerClient(gateway.http_url)
        tensor = httpclient.InferInput("X", [3], "FP32")
        tensor.set_data_from_numpy(np.arange(3, dtype=np.float32))
        result = client.infer("recho", [tensor], request_id="req-7",
                              parameters={"traceparent": traceparent, "custom": "v"})
        np.testing.assert_array_equal(result.as_numpy("Y"), np.arange(3, dtype=np.float32))
        seen = json.loads(result.as_numpy("PARAMS")[0])
        assert seen["id"] == "req-7"
        assert seen["parameters"]["traceparent"] == traceparent and seen["parameters"]["custom"] == "v"


def test_pipeline_timeout_cancels_the_remote_call(remote: RunningServer, tmp_path: Path, slow_gate: FileGate) -> None:
    """A pipeline's own timeout parameter bounds its remote step (no timeout_ms): 504, and the
    remote's request is cancelled while its model still holds."""
    repo = _gateway(tmp_path / "gw", [_url(remote, "grpc")])
    _write(repo / "pslow" / "config.yaml", """
        backend: pipeline
        max_batch_size: 8
        inputs: [{name: SLEEP_MS, datatype: INT32, shape: [1]}]
        outputs: [{name: DONE, datatype: INT32, shape: [1]}]
        pipeline:
          steps: [{model: rslow, inputs: {SLEEP_MS: SLEEP_MS}}]
          outputs: {DONE: rslow.DONE}
    """)
    with serve_in_thread(repo) as gateway:
        client = httpclient.InferenceServerClient(gateway.http_url)
        tensor = httpclient.InferInput("SLEEP_MS", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[-1]], dtype=np.int32))
        with pytest.raises(InferenceServerException) as failure:
            client.infer("pslow", [tensor], timeout=300_000)
        assert failure.value.status() == "504"
        wait_until(lambda: remote.in_flight("slow") == 0, timeout=60, what="the remote request was cancelled")
        assert not (slow_gate.path / "release").exists()


def test_remote_going_down_then_back(tmp_path: Path) -> None:
    """A remote that stops while the gateway serves: the next request is a 503 naming the node
    and the endpoint, the node and its pipeline turn not ready, and both are ready again (and
    answer) once a server is back on that address, without restarting the gateway."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    holder.close()
    url = f"http://127.0.0.1:{port}"
    repo = _gateway(tmp_path / "gw", [url])
    x = np.ones((1, 2), dtype=np.float32)
    with contextlib.ExitStack() as first_remote:
        first_remote.enter_context(_serve_on_port(REMOTE_REPO, port))
        with serve_in_thread(repo) as gateway:
            client = httpclient.InferenceServerClient(gateway.http_url)
            wait_until(lambda: client.is_model_ready("pipe"), timeout=60, what="the pipeline is ready")
            np.testing.assert_array_equal(_http_infer(gateway, "pipe", x), x * 2 + 1)
            first_remote.close()  # the remote stops; the gateway keeps serving
            with pytest.raises(InferenceServerException) as failure:
                _http_infer(gateway, "pipe", x)
            assert failure.value.status() == "503"
            assert "rscale" in failure.value.message() and url in failure.value.message()
            assert not client.is_model_ready("pipe")
            with _serve_on_port(REMOTE_REPO, port):
                wait_until(lambda: client.is_model_ready("pipe"), timeout=60, what="the pipeline is ready again")
                np.testing.assert_array_equal(_http_infer(gateway, "pipe", x), x * 2 + 1)
