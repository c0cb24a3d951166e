"""Graceful shutdown of `dagserve serve`: SIGTERM under HTTP and gRPC load loses no request,
refuses new connections, exits 0 as soon as the work is done; a second signal exits at once;
--exit-timeout-secs bounds a request that never ends."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dagserve._proto import health_pb2, health_pb2_grpc

REPO = Path(__file__).parent / "repos" / "shutdown"
CLIENTS = 16  # per protocol
DEADLINE = 60.0  # generous: the machine may be busy


class Gate:
    """The test's side of the ``gate`` model: counts arrivals, opens the gate."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def arrivals(self) -> int:
        arrived = self.path / "arrived"
        return len(list(arrived.iterdir())) if arrived.exists() else 0

    def open(self) -> None:
        (self.path / "open").touch()


def read_addresses(proc: subprocess.Popen[str]) -> dict[str, str]:
    """The addresses `dagserve serve` prints once it listens."""
    found: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)|metrics served at http://(\S+)/metrics", line)
        if match:
            found[match.group(1) or "metrics"] = match.group(2) or match.group(3)
        if len(found) == 3:
            return found
    raise AssertionError(f"server exited before reporting its ports (code {proc.wait()})")


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start(gate: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DAGSERVE_TEST_GATE": str(gate), **(env or {})},
    )
    return proc, read_addresses(proc)


def _ignore_errors(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn`` for a request whose fate the test does not check (the process is killed)."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001, S110
        pass


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path / "gate")


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        # A reset means the listener closed while this connect was in its backlog.
        return True


def x_of(i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array([i, i + 0.5], dtype=np.float32)


def http_call(url: str, i: int) -> np.ndarray[Any, Any]:
    client = httpclient.InferenceServerClient(url, network_timeout=DEADLINE * 2)
    try:
        x = httpclient.InferInput("X", [2], "FP32")
        x.set_data_from_numpy(x_of(i))
        result = client.infer("gated", [x])
        return result.as_numpy("Y")
    finally:
        client.close()


def grpc_call(url: str, i: int) -> np.ndarray[Any, Any]:
    client = grpcclient.InferenceServerClient(url)
    try:
        x = grpcclient.InferInput("X", [2], "FP32")
        x.set_data_from_numpy(x_of(i))
        result = client.infer("gated", [x], client_timeout=DEADLINE * 2)
        return result.as_numpy("Y")
    finally:
        client.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_every_request_and_refuses_new_connections(
    gate: Gate, cleanup: list[subprocess.Popen[str]], workers: int
) -> None:
    """16 HTTP and 16 gRPC clients each have a pipeline request waiting in a slow step when
    SIGTERM comes: readiness turns false, new connections are refused, every request is then
    answered correctly, and the server exits 0 soon after the last one — also when the server
    is several worker processes (``--workers 2``: the signal reaches the supervisor only)."""
    proc, addresses = start(gate.path, "--workers", str(workers))
    cleanup.append(proc)
    results: dict[tuple[str, int], Any] = {}

    def run(kind: str, i: int) -> None:
        call = http_call if kind == "http" else grpc_call
        try:
            results[kind, i] = call(addresses["HTTP" if kind == "http" else "gRPC"], i)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results[kind, i] = exc

    # A health watch opened before the signal sees the server turn NOT_SERVING.
    channel = grpc.insecure_channel(addresses["gRPC"])
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

    threads = [threading.Thread(target=run, args=(kind, i)) for kind in ("http", "grpc") for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    wait_for(lambda: gate.arrivals() == 2 * CLIENTS, "every request to reach the slow step")

    proc.send_signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(StopIteration):
        next(watch)  # and the watch ends
    channel.close()
    wait_for(lambda: refused(addresses["HTTP"]) and refused(addresses["gRPC"]), "new connections to be refused")
    assert proc.poll() is None, "the server must wait for its requests"

    gate.open()
    opened = time.monotonic()
    for thread in threads:
        thread.join(DEADLINE)
    out, _ = proc.communicate(timeout=DEADLINE)
    exit_seconds = time.monotonic() - opened

    for (kind, i), result in sorted(results.items()):
        assert not isinstance(result, Exception), f"{kind} client {i}: {result!r}"
        np.testing.assert_array_equal(result, (x_of(i) + 1) * 2)
    assert len(results) == 2 * CLIENTS
    assert proc.returncode == 0, out
    assert exit_seconds < 10, f"exited {exit_seconds:.1f}s after its last request could end"
    assert gate.arrivals() == 2 * CLIENTS


def test_keep_alive_connection_answers_with_connection_close(gate: Gate, cleanup: list[subprocess.Popen[str]]) -> None:
    """A request in flight on a keep-alive connection is answered during the drain with
    ``connection: close``, and then the connection closes."""
    proc, addresses = start(gate.path)
    cleanup.append(proc)
    host, port = addresses["HTTP"].rsplit(":", 1)
    body = b'{"inputs":[{"name":"X","datatype":"FP32","shape":[1],"data":[3]}]}'
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
        sock.sendall(b"POST /v2/models/gated/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: gate.arrivals() == 1, "the request to reach the slow step")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(addresses["HTTP"]), "new connections to be refused")
        gate.open()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), received
    assert b"connection: close" in head.lower()
    assert b'"data":[8.0]' in payload
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0


def test_decoupled_stream_and_bls_call_finish_during_the_drain(
    gate: Gate, cleanup: list[subprocess.Popen[str]]
) -> None:
    """A decoupled gRPC stream that has sent one of its responses, and a model that makes its
    BLS call only after SIGTERM, both complete: all five stream responses, the BLS answer."""
    proc, addresses = start(gate.path)
    cleanup.append(proc)
    responses: list[Any] = []
    done = threading.Event()

    def on_response(result: Any, error: Any) -> None:
        responses.append(error if error is not None else result)
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            done.set()

    stream_client = grpcclient.InferenceServerClient(addresses["gRPC"])
    stream_client.start_stream(callback=on_response)
    n = grpcclient.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.array([5], np.int32))
    stream_client.async_stream_infer("gate_repeat", [n], enable_empty_final_response=True)

    bls: list[Any] = []

    def call_bls() -> None:
        client = httpclient.InferenceServerClient(addresses["HTTP"], network_timeout=DEADLINE * 2)
        x = httpclient.InferInput("X", [2], "FP32")
        x.set_data_from_numpy(x_of(7))
        try:
            bls.append(client.infer("gate_bls", [x]).as_numpy("Y"))
        except Exception as exc:  # noqa: BLE001
            bls.append(exc)
        client.close()

    thread = threading.Thread(target=call_bls)
    thread.start()
    wait_for(lambda: gate.arrivals() == 2, "the stream and the BLS model to wait at the gate")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(addresses["HTTP"]) and refused(addresses["gRPC"]), "the drain to begin")
    gate.open()
    assert done.wait(DEADLINE)
    thread.join(DEADLINE)
    stream_client.stop_stream()
    stream_client.close()
    proc.communicate(timeout=DEADLINE)

    outs = [int(r.as_numpy("OUT")[0]) for r in responses if not isinstance(r, Exception) and r.as_numpy("OUT") is not None]
    assert outs == [0, 1, 2, 3, 4], responses
    assert len(bls) == 1 and not isinstance(bls[0], Exception), bls
    np.testing.assert_array_equal(bls[0], x_of(7) * 2 + 1)
    assert proc.returncode == 0


def test_second_signal_exits_at_once(gate: Gate, cleanup: list[subprocess.Popen[str]]) -> None:
    """While a drain waits for a request that is not done, a second SIGTERM exits at once,
    with status 128 + SIGTERM."""
    proc, addresses = start(gate.path, "--exit-timeout-secs", "600")
    cleanup.append(proc)
    thread = threading.Thread(target=_ignore_errors, args=(http_call, addresses["HTTP"], 1))
    thread.start()
    wait_for(lambda: gate.arrivals() == 1, "the request to reach the slow step")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refused(addresses["HTTP"]), "the drain to begin")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=DEADLINE)  # well before the 600 s exit timeout
    thread.join(DEADLINE)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM received again, exiting now" in out


@pytest.mark.parametrize("how", ["flag", "env"])
def test_exit_timeout_bounds_a_request_that_never_ends(
    gate: Gate, cleanup: list[subprocess.Popen[str]], how: str
) -> None:
    """With --exit-timeout-secs 2 (or DAGSERVE_EXIT_TIMEOUT_SECS=2), a request that never ends
    is cancelled after 2 s, its client gets an error, and the server exits."""
    if how == "flag":
        proc, addresses = start(gate.path, "--exit-timeout-secs", "2")
    else:
        proc, addresses = start(gate.path, env={"DAGSERVE_EXIT_TIMEOUT_SECS": "2"})
    cleanup.append(proc)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            grpc_call(addresses["gRPC"], 1)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: gate.arrivals() == 1, "the request to reach the slow step")
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=DEADLINE)
    elapsed = time.monotonic() - signalled
    thread.join(DEADLINE)
    assert proc.returncode == 0, out
    assert elapsed >= 2, "the request in flight must be given its exit timeout"
    assert len(errors) == 1
    assert not (gate.path / "open").exists()


def test_idle_server_exits_promptly(gate: Gate, cleanup: list[subprocess.Popen[str]]) -> None:
    """An idle server with an idle keep-alive HTTP client and gRPC channel exits 0 on SIGTERM
    without waiting for its exit timeout (600 s here)."""
    proc, addresses = start(gate.path, "--exit-timeout-secs", "600")
    cleanup.append(proc)
    http = httpclient.InferenceServerClient(addresses["HTTP"])
    grpc_client = grpcclient.InferenceServerClient(addresses["gRPC"])
    assert http.is_server_ready() and grpc_client.is_server_ready()
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=DEADLINE)
    elapsed = time.monotonic() - signalled
    http.close()
    grpc_client.close()
    assert proc.returncode == 0, out
    assert elapsed < 30, f"an idle server took {elapsed:.1f}s to exit"
    assert "dagserve: stopped" in out


def test_grpc_calls_waiting_to_be_accepted_when_sigterm_comes_are_answered(
    gate: Gate, cleanup: list[subprocess.Popen[str]]
) -> None:
    """gRPC calls a client sent before SIGTERM that the server had not yet taken from gRPC's
    core (its event loop was busy) are answered, not cancelled by the stop. An inline model
    holds the loop while the calls are sent and the signal arrives; then it lets go."""
    proc, addresses = start(gate.path)
    cleanup.append(proc)
    url = addresses["gRPC"]
    clients = [grpcclient.InferenceServerClient(url) for _ in range(CLIENTS)]
    for client in clients:
        assert client.is_server_live()  # connected before the loop is held
    holder = threading.Thread(target=_ignore_errors, args=(_call_model, clients[0], "loop_hold", 0))
    holder.start()
    wait_for(lambda: (gate.path / "held").exists() and any((gate.path / "held").iterdir()), "the loop to be held")

    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = _call_model(clients[i], "double", i)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, CLIENTS)]
    for thread in threads:
        thread.start()
    proc.send_signal(signal.SIGTERM)
    (gate.path / "release").touch()
    for thread in threads + [holder]:
        thread.join(DEADLINE)
    proc.communicate(timeout=DEADLINE)
    for client in clients:
        client.close()
    assert proc.returncode == 0
    for i, result in sorted(results.items()):
        assert not isinstance(result, Exception), f"client {i}: {result!r}"
        np.testing.assert_array_equal(result, x_of(i) * 2)
    assert len(results) == CLIENTS - 1


def _call_model(client: grpcclient.InferenceServerClient, model: str, i: int) -> np.ndarray[Any, Any]:
    x = grpcclient.InferInput("X", [2], "FP32")
    x.set_data_from_numpy(x_of(i))
    return client.infer(model, [x], client_timeout=DEADLINE * 2).as_numpy("Y")
