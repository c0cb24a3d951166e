"""`dagserve serve` options as a user passes them, each checked through the wire: --version,
port -1, --host, --log-level, --load-model (and an unknown name), the size limits,
--cache-config end to end with the nv_cache_* metrics, and
--grpc-infer-response-compression-level (the bytes of a response)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve import __version__

ECHO = '''
import numpy as np


def infer(inputs):
    return {"Y": np.array(inputs["X"], copy=True)}
'''

IO = "inputs: [{name: X, datatype: FP32, shape: [-1]}]\noutputs: [{name: Y, datatype: FP32, shape: [-1]}]\n"
PORTS = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name, extra in (("echo", ""), ("cached", "response_cache: {enable: true}\n"), ("other", "")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(ECHO)
        (root / name / "config.yaml").write_text("backend: python\n" + IO + extra)
    return root


class Served:
    """A `dagserve serve` subprocess with the addresses it reported and everything it printed."""

    def __init__(self, proc: subprocess.Popen[str], addresses: dict[str, str], lines: list[str]) -> None:
        self.proc = proc
        self.addresses = addresses
        self.lines = lines


@contextmanager
def serve(*args: str, expect: tuple[str, ...] = ("HTTP", "gRPC", "metrics")) -> Iterator[Served]:
    """Start `dagserve serve ARGS`, wait until it reported the ``expect``ed frontends, yield,
    then SIGTERM it and check it exits 0; ``lines`` then holds its whole output."""
    proc = subprocess.Popen([sys.executable, "-m", "dagserve.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)|metrics served at http://(\S+)/metrics",
                              line)
            if match:
                found[match.group(1) or "metrics"] = match.group(2) or match.group(3)
            if set(found) == set(expect):
                break
        else:
            raise AssertionError(f"server exited (code {proc.wait()}) before reporting its ports:\n{''.join(lines)}")
        served = Served(proc, found, lines)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        lines.append(out)
    assert proc.returncode == 0, "".join(lines)


def _infer_http(url: str, model: str, x: np.ndarray) -> np.ndarray:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor]).as_numpy("Y")


def _infer_grpc(url: str, model: str, x: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor]).as_numpy("Y")


def _metric(text: str, family: str, **labels: str) -> float:
    """The sum of ``family``'s samples whose labels include ``labels``; fails when none."""
    total, seen = 0.0, False
    for line in text.splitlines():
        match = re.fullmatch(rf"{family}\{{(.*)\}} (\S+)", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
            seen = True
    assert seen, f"no sample of {family} with {labels}"
    return total


def test_version_prints_the_package_version() -> None:
    """--version prints "dagserve <version>" and exits 0."""
    done = subprocess.run([sys.executable, "-m", "dagserve.cli", "--version"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert done.stdout.strip() == f"dagserve {__version__}"


def test_port_minus_one_disables_a_frontend(repo: Path) -> None:
    """--http-port -1 and --metrics-port -1 leave only gRPC, which serves."""
    with serve("--model-repository", str(repo), "--http-port", "-1", "--grpc-port", "0", "--metrics-port", "-1",
               expect=("gRPC",)) as served:
        np.testing.assert_array_equal(_infer_grpc(served.addresses["gRPC"], "echo", np.ones(3, np.float32)), 1)
    output = "".join(served.lines)
    assert "HTTP service listening" not in output and "metrics served at" not in output


def test_host_chooses_the_listening_address(repo: Path) -> None:
    """--host 127.0.0.2 listens there (and answers), not on 127.0.0.1."""
    with serve("--model-repository", str(repo), *PORTS, "--host", "127.0.0.2") as served:
        http = served.addresses["HTTP"]
        host, port = http.rsplit(":", 1)
        assert host == "127.0.0.2"
        assert served.addresses["gRPC"].startswith("127.0.0.2:")
        assert httpx.get(f"http://{http}/v2/health/ready", timeout=10).status_code == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(port)), timeout=10).close()


@pytest.mark.parametrize(("level", "info", "debug"), [("debug", True, True), ("info", True, False),
                                                      ("warning", False, False)])
def test_log_level_filters_the_log(repo: Path, level: str, info: bool, debug: bool) -> None:
    """--log-level decides which records reach the log: the per-model INFO lines, DEBUG lines."""
    with serve("--model-repository", str(repo), *PORTS, "--log-level", level) as served:
        pass
    output = "".join(served.lines)
    assert bool(re.search(r"^I\d{4} [\d:.]+ \d+ model\.py:\d+\] model 'echo' version 1: ", output, re.M)) is info, output
    assert bool(re.search(r"^V\d{4} ", output, re.M)) is debug, output


def test_load_model_flag_loads_only_those(repo: Path) -> None:
    """Explicit mode with --load-model twice loads exactly those two models."""
    with serve("--model-repository", str(repo), *PORTS, "--model-control-mode", "explicit",
               "--load-model", "echo", "--load-model", "cached") as served, \
            httpclient.InferenceServerClient(served.addresses["HTTP"]) as client:
        index = client.get_model_repository_index()
        assert sorted(m["name"] for m in index if m.get("state") == "READY") == ["cached", "echo"]
        assert client.is_model_ready("other") is False


def test_load_model_with_an_unknown_name_refuses_to_start(repo: Path) -> None:
    """--load-model naming no model in the repository exits 2 naming it, without a traceback."""
    done = subprocess.run([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), *PORTS,
                           "--model-control-mode", "explicit", "--load-model", "echo", "--load-model", "nope"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "nope" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


def test_http_max_body_size_limits_requests(repo: Path) -> None:
    """--http-max-body-size 4096: a request body under it is served, one over it is a 413 naming the limit."""
    with serve("--model-repository", str(repo), *PORTS, "--http-max-body-size", "4096") as served:
        url = served.addresses["HTTP"]
        np.testing.assert_array_equal(_infer_http(url, "echo", np.ones(100, np.float32)), 1)
        with pytest.raises(InferenceServerException) as info:
            _infer_http(url, "echo", np.ones(4096, np.float32))
        assert info.value.status() == "413"
        assert "4096" in info.value.message()


def test_grpc_max_message_size_limits_messages(repo: Path) -> None:
    """--grpc-max-message-size 8192: a small request is served, a larger one is RESOURCE_EXHAUSTED."""
    with serve("--model-repository", str(repo), *PORTS, "--grpc-max-message-size", "8192") as served:
        url = served.addresses["gRPC"]
        np.testing.assert_array_equal(_infer_grpc(url, "echo", np.ones(100, np.float32)), 1)
        with pytest.raises(InferenceServerException) as info:
            _infer_grpc(url, "echo", np.ones(8192, np.float32))
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("cache", [True, False])
def test_cache_config_serves_repeats_from_the_cache(repo: Path, cache: bool) -> None:
    """With --cache-config local,size=1048576 a repeated request of an opted-in model is a cache
    hit: one execution, nv_cache_num_hits_per_model 1 and misses 1; without the flag both run."""
    args = ("--cache-config", "local,size=1048576") if cache else ()
    with serve("--model-repository", str(repo), *PORTS, *args) as served:
        x = np.arange(5, dtype=np.float32)
        for _ in range(2):
            np.testing.assert_array_equal(_infer_http(served.addresses["HTTP"], "cached", x), x)
        text = httpx.get(f"http://{served.addresses['metrics']}/metrics", timeout=10).text
    executions = _metric(text, "nv_inference_exec_count", model="cached", version="1")
    assert _metric(text, "nv_inference_request_success", model="cached", version="1") == 2
    if cache:
        assert executions == 1
        assert _metric(text, "nv_cache_num_hits_per_model", model="cached", version="1") == 1
        assert _metric(text, "nv_cache_num_misses_per_model", model="cached", version="1") == 1
        assert _metric(text, "nv_cache_hit_duration_per_model", model="cached", version="1") > 0
    else:
        assert executions == 2
        assert not re.search(r'nv_cache_num_hits_per_model\{[^}]*model="cached"[^}]*\} [1-9]', text)


WHERE = '''
import threading
import numpy as np


def infer(inputs):
    return {"Y": np.array([threading.current_thread() is threading.main_thread()], np.bool_)}
'''


@pytest.mark.parametrize("flag, on_loop", [((), False), (("--python-execution", "thread"), False),
                                           (("--python-execution", "inline"), True)])
def test_python_execution_chooses_where_sync_models_run(tmp_path: Path, flag: tuple[str, ...], on_loop: bool) -> None:
    """--python-execution inline runs sync Python models that set no ``execution`` on the event
    loop (the main thread); the default runs them on their instances' worker threads."""
    (tmp_path / "where" / "1").mkdir(parents=True)
    (tmp_path / "where" / "1" / "model.py").write_text(WHERE)
    (tmp_path / "where" / "config.yaml").write_text(
        "backend: python\ninputs: [{name: X, datatype: FP32, shape: [-1]}]\n"
        "outputs: [{name: Y, datatype: BOOL, shape: [1]}]\n"
    )
    with serve("--model-repository", str(tmp_path), *PORTS, *flag) as served:
        client = httpclient.InferenceServerClient(served.addresses["HTTP"])
        x = httpclient.InferInput("X", [2], "FP32")
        x.set_data_from_numpy(np.zeros(2, np.float32))
        assert client.infer("where", [x]).as_numpy("Y").tolist() == [on_loop]
        client.close()


def test_python_execution_refuses_an_unknown_mode(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(tmp_path),
                           "--python-execution", "fast"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--python-execution" in proc.stderr and "'fast'" in proc.stderr


def _infer_on_the_wire(url: str, x: np.ndarray) -> tuple[bytes | None, np.ndarray]:
    """A ModelInfer of ``echo`` over a bare HTTP/2 connection whose client accepts gzip and
    deflate: the response's ``grpc-encoding`` and its Y, decompressed when the flag says so."""
    from dagserve._proto import grpc_service_pb2 as pb
    from dagserve.frontends.grpc_native import connection as h2
    from dagserve.frontends.grpc_native.hpack import Decoder, encode_literal

    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="X", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    body = request.SerializeToString()
    fields = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
              (b":authority", b"test"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
              (b"grpc-accept-encoding", b"identity, deflate, gzip"))
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0)
                     + h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"".join(encode_literal(n, v) for n, v in fields))
                     + h2.frame(h2.DATA, h2.END_STREAM, 1, b"\0" + len(body).to_bytes(4, "big") + body))
        buffer, data, decoder, headers = b"", b"", Decoder(), {}
        while True:
            while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                buffer += chunk
            size, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
            payload, buffer = buffer[9:9 + size], buffer[9 + size:]
            if kind == h2.DATA:
                data += payload
            elif kind == h2.HEADERS and flags & h2.END_STREAM:
                assert dict(decoder.decode(payload))[b"grpc-status"] == b"0"
                break
            elif kind == h2.HEADERS:
                headers = dict(decoder.decode(payload))
    encoding = headers.get(b"grpc-encoding")
    message = data[5:]
    if data[0] == 1:
        assert encoding is not None, "a compressed message without grpc-encoding"
        message = zlib.decompress(message, {b"gzip": 31, b"deflate": 15}[encoding])
    response = pb.ModelInferResponse.FromString(message)
    return encoding, np.frombuffer(response.raw_output_contents[0], np.float32)


@pytest.mark.parametrize("level, encoding", [(None, None), ("LOW", b"gzip"), ("high", b"deflate")])
def test_grpc_infer_response_compression_level_compresses_responses(
    repo: Path, level: str | None, encoding: bytes | None
) -> None:
    """--grpc-infer-response-compression-level (any case, as Triton takes it): ModelInfer
    responses to a client that accepts gzip and deflate come compressed with gRPC's choice
    for the level (low: gzip, high: deflate), and tritonclient reads them; without it, plain."""
    args = ("--grpc-infer-response-compression-level", level) if level is not None else ()
    with serve("--model-repository", str(repo), *PORTS, *args) as served:
        x = np.arange(4096, dtype=np.float32) % 7
        got, y = _infer_on_the_wire(served.addresses["gRPC"], x)
        assert got == encoding
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(_infer_grpc(served.addresses["gRPC"], "echo", x), x)


def test_grpc_infer_response_compression_level_refuses_an_unknown_level(tmp_path: Path) -> None:
    """An unknown level stops `dagserve serve` with status 2, naming the flag and the levels."""
    proc = subprocess.run([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(tmp_path),
                           "--grpc-infer-response-compression-level", "max"], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--grpc-infer-response-compression-level" in proc.stderr and "'max'" in proc.stderr
    assert "'none', 'low', 'medium', 'high'" in proc.stderr
