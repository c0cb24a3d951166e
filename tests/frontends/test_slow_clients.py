"""Slow and greedy clients cannot hold the server: HTTP header, body and write timeouts and
the connection limit, and gRPC connection age, tested with raw sockets."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from dagserve.frontends.limits import GrpcKeepalive, HttpLimits
from dagserve.testing import RunningServer, serve_in_thread

DEADLINE = 60.0  # generous: the machine may be busy
TCP_ESTABLISHED = 1

MODEL = """
import numpy as np

class Model:
    def __init__(self, context):
        pass

    def infer(self, inputs):
        return {"Y": np.zeros(int(inputs["N"][0]), np.uint8)}
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model, ``zeros``: Y = N zero bytes, so a test picks its response's size."""
    root = tmp_path_factory.mktemp("repo")
    (root / "zeros" / "1").mkdir(parents=True)
    (root / "zeros" / "config.yaml").write_text(
        "backend: python\ninputs: [{name: N, datatype: INT32, shape: [1]}]\n"
        "outputs: [{name: Y, datatype: UINT8, shape: [-1]}]\n"
    )
    (root / "zeros" / "1" / "model.py").write_text(MODEL)
    return root


def zeros_request(n: int) -> bytes:
    body = json.dumps({
        "inputs": [{"name": "N", "datatype": "INT32", "shape": [1], "data": [n]}],
        "outputs": [{"name": "Y", "parameters": {"binary_data": True}}],
    }).encode()
    return (b"POST /v2/models/zeros/infer HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body)) + body


@pytest.fixture
def serve(repository: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers of ``repository`` (HTTP only) with the given :class:`HttpLimits` fields."""
    with contextlib.ExitStack() as stack:

        def start(**limits: float) -> RunningServer:
            return stack.enter_context(
                serve_in_thread(repository, grpc=False, metrics=False, http_limits=HttpLimits(**limits))
            )

        yield start


def connect(running: RunningServer) -> socket.socket:
    host, port = running.http_url.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=DEADLINE)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a reset ends it too)."""
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def answered(running: RunningServer) -> bool:
    """One quick request on a fresh connection gets its 200."""
    with connect(running) as sock:
        sock.sendall(zeros_request(4))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            head += chunk
        return head.startswith(b"HTTP/1.1 200")


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (Linux ``TCP_INFO``'s first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_half_sent_headers_are_timed_out_without_blocking_others(serve: Callable[..., RunningServer]) -> None:
    """A client that sends half its headers and stalls gets 408 and is disconnected after the
    header timeout; meanwhile other clients are served."""
    running = serve(header_timeout=0.5)
    with connect(running) as stalled:
        started = time.monotonic()
        stalled.sendall(b"POST /v2/models/zeros/infer HTTP/1.1\r\nhost: t\r\ncontent-le")
        assert answered(running)
        reply = read_all(stalled)
        assert time.monotonic() - started >= 0.5
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"headers not received" in reply


def test_silent_connection_is_closed_after_the_header_timeout(serve: Callable[..., RunningServer]) -> None:
    """A connection that never sends a byte is closed after the header timeout."""
    running = serve(header_timeout=0.5)
    with connect(running) as silent:
        assert read_all(silent) == b""


def test_stalled_body_is_timed_out(serve: Callable[..., RunningServer]) -> None:
    """A client that sends its headers and part of its body, then stalls, gets 408 and is
    disconnected after the body timeout; others are served meanwhile."""
    running = serve(body_timeout=0.5)
    with connect(running) as stalled:
        stalled.sendall(b"POST /v2/models/zeros/infer HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n{\"inp")
        assert answered(running)
        reply = read_all(stalled)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"body stalled" in reply


def test_slow_but_steady_body_is_not_timed_out(serve: Callable[..., RunningServer]) -> None:
    """The body timeout bounds a pause, not the whole body: a body sent in pieces, each well
    within the timeout of the last, is served."""
    running = serve(body_timeout=5)
    request = zeros_request(4)
    head_end = request.index(b"\r\n\r\n") + 4
    with connect(running) as sock:
        sock.sendall(request[:head_end])
        for i in range(head_end, len(request), 8):
            sock.sendall(request[i:i + 8])
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply


def test_client_that_never_reads_is_dropped_after_the_write_timeout(serve: Callable[..., RunningServer]) -> None:
    """A client that asks for a 64 MB response and never reads it is dropped after the write
    timeout, and does not hold up other clients."""
    running = serve(write_timeout=0.5)
    size = 64 << 20
    with connect(running) as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.sendall(zeros_request(size))
        assert answered(running)
        wait_for(lambda: tcp_state(greedy) != TCP_ESTABLISHED, "the server to drop the connection")
        received = read_all(greedy)
    assert len(received) < size


def test_slow_but_steady_reader_gets_the_whole_response(serve: Callable[..., RunningServer]) -> None:
    """The write timeout bounds a stall, not the whole response: a client reading a 16 MB
    response in small pieces over several write timeouts gets all of it."""
    running = serve(write_timeout=1)
    size = 16 << 20
    with connect(running) as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        reader.sendall(zeros_request(size))
        data = b""
        while b"\r\n\r\n" not in data:
            data += reader.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"\ncontent-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        started = time.monotonic()
        while len(body) < length:
            chunk = reader.recv(256 << 10)
            assert chunk, f"dropped after {len(body)} of {length} bytes"
            body += chunk
            time.sleep(0.02)  # pacing: a slow reader is what this test is about
    assert length > size, body[:300]
    assert time.monotonic() - started > 1, "the reader must have been slower than one write timeout"


def test_connection_limit_refuses_extra_connections(serve: Callable[..., RunningServer]) -> None:
    """Past ``max_connections`` a new connection is answered 503 and closed; the open ones go
    on working, and once one closes a new one is accepted again."""
    running = serve(max_connections=3)
    held = [connect(running) for _ in range(3)]
    try:
        for sock in held:  # each is served, so the server has registered it
            sock.sendall(zeros_request(4))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(running) as extra:
            reply = read_all(extra)
        assert reply.startswith(b"HTTP/1.1 503"), reply
        assert b"too many connections" in reply
        for sock in held:
            sock.sendall(zeros_request(4))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        held.pop().close()
        wait_for(lambda: answered(running), "a connection to be accepted again")
    finally:
        for sock in held:
            sock.close()


# -------------------------------------------------------------------------------- gRPC

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _PING, _GOAWAY = 4, 6, 7


def _frames(sock: socket.socket) -> Iterator[tuple[int, int, bytes]]:
    """HTTP/2 frames ``(type, flags, payload)`` read from ``sock`` until it closes."""
    buf = b""
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            length = int.from_bytes(buf[:3], "big")
            yield buf[3], buf[4], buf[9:9 + length]
            buf = buf[9 + length:]
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return
        if not chunk:
            return
        buf += chunk


def test_grpc_max_connection_age_sends_goaway() -> None:
    """With --grpc-max-connection-age, a connection is sent GOAWAY and closed once that old;
    clients reconnect and are served as before."""
    keepalive = GrpcKeepalive(max_connection_age=300, max_connection_age_grace=300)
    with serve_in_thread(None, http=False, metrics=False, grpc_keepalive=keepalive) as running:
        host, port = running.grpc_url.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
            sock.sendall(_PREFACE + struct.pack(">I", 0)[1:] + bytes([_SETTINGS, 0]) + b"\0\0\0\0")
            kinds = [kind for kind, flags, _ in _frames(sock)]
        assert _GOAWAY in kinds
        client = grpcclient.InferenceServerClient(running.grpc_url)
        for _ in range(3):
            assert client.is_server_live()
        client.close()


def test_grpc_keepalive_options_reach_the_channel() -> None:
    """Each set field becomes its gRPC channel argument; unset ones are left to gRPC."""
    options = dict(GrpcKeepalive(keepalive_time=1000, http2_max_ping_strikes=0,
                                 keepalive_permit_without_calls=True).channel_options())
    assert options == {"grpc.keepalive_time_ms": 1000, "grpc.http2.max_ping_strikes": 0,
                       "grpc.keepalive_permit_without_calls": 1}
    with pytest.raises(ValueError, match="keepalive time"):
        GrpcKeepalive(keepalive_time=-1)
    with pytest.raises(ValueError, match="header timeout"):
        HttpLimits(header_timeout=0)


def test_cli_flags_and_environment_set_the_limits(repository: Path) -> None:
    """`dagserve serve` takes the limits from flags (--http-header-timeout-secs,
    --grpc-max-connection-age) and from DAGSERVE_* variables (DAGSERVE_HTTP_MAX_CONNECTIONS)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repository),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "-1",
         "--http-header-timeout-secs", "0.5", "--grpc-max-connection-age", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DAGSERVE_HTTP_MAX_CONNECTIONS": "1"},
    )
    try:
        addresses: dict[str, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)", line):
                addresses[match.group(1)] = match.group(2)
            if len(addresses) == 2:
                break
        host, port = addresses["HTTP"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as first:
            first.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
            assert first.recv(65536).startswith(b"HTTP/1.1 200")
            with socket.create_connection((host, int(port)), timeout=DEADLINE) as second:
                assert read_all(second).startswith(b"HTTP/1.1 503")  # DAGSERVE_HTTP_MAX_CONNECTIONS=1
        replies: list[bytes] = []

        def stall() -> bool:  # refused (503) until the server has seen `first` close
            with socket.create_connection((host, int(port)), timeout=DEADLINE) as stalled:
                stalled.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost")
                replies.append(read_all(stalled))
            return not replies[-1].startswith(b"HTTP/1.1 503")

        wait_for(stall, "a connection to be accepted")
        assert replies[-1].startswith(b"HTTP/1.1 408")  # --http-header-timeout-secs 0.5
        host, port = addresses["gRPC"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
            sock.sendall(_PREFACE + struct.pack(">I", 0)[1:] + bytes([_SETTINGS, 0]) + b"\0\0\0\0")
            assert _GOAWAY in (kind for kind, _, _ in _frames(sock))  # --grpc-max-connection-age 300
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0


@pytest.mark.parametrize("flag", ["--http-header-timeout-secs=0", "--http-max-connections=-1", "--http-max-header-size=100",
                                  "--grpc-keepalive-time=-5", "--exit-timeout-secs=-1"])
def test_out_of_range_limit_is_a_clear_error(repository: Path, flag: str) -> None:
    """A timeout or limit out of range stops `dagserve serve` at once with status 2 and a
    message naming it, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repository), flag],
        check=False, capture_output=True, text=True, timeout=DEADLINE,
    )
    assert proc.returncode == 2
    name = flag.split("=")[0].removeprefix("--").replace("-secs", "").replace("http-", "").replace("grpc-", "")
    assert name.replace("-", " ") in proc.stderr and "Traceback" not in proc.stderr
