"""dagserve's own HTTP/1.1 server: keep-alive, pipelining, request framing, 100-continue,
malformed input, the ASGI bridge, disconnects, backpressure and graceful shutdown.

Raw sockets throughout, since a client library would hide exactly the behaviour under test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from dagserve.frontends.http import server as http_server
from dagserve.frontends.http.replies import Reply
from dagserve.frontends.http.server import _Connection, _State, serve_http11
from dagserve.testing import FileGate, RunningServer, serve_in_thread, wait_until, wait_until_async

REPOS = Path(__file__).parents[1] / "repos"
A = [1.0, 2.0, 3.0, 4.0]
B = [1.0, 1.0, 1.0, 1.0]
ADD_SUB = json.dumps({
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": A},
        {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": B},
    ]
}).encode()
SUM = [a + b for a, b in zip(A, B)]


# ----------------------------------------------------------------------- raw HTTP client


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """A raw HTTP/1.x client connection that reads responses exactly as framed."""

    def __init__(self, port: int, *, timeout: float = 60) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise ConnectionError(f"connection closed before {marker!r}; got {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self._fill():
                raise ConnectionError("connection closed mid-body")
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def response(self, *, head_only: bool = False) -> Response:
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ")
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        code = int(status)
        if head_only or code < 200 or code in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int(self._until(b"\r\n"), 16):
                parts.append(self._exactly(size))
                assert self._exactly(2) == b"\r\n"
            assert self._exactly(2) == b"\r\n"
            body = b"".join(parts)
        else:
            while self._fill():
                pass
            body, self.buf = self.buf, b""
        return Response(code, headers, body)

    def at_eof(self, timeout: float = 60) -> bool:
        """Whether the server closes the connection (within ``timeout``) with nothing more."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill() and not self.buf
        except (TimeoutError, ConnectionResetError):
            return False


def request(
    method: str, path: str, body: bytes = b"", *, version: str = "1.1", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def infer(model: str = "add_sub", body: bytes = ADD_SUB, **kwargs: Any) -> bytes:
    return request("POST", f"/v2/models/{model}/infer", body, **kwargs)


def outputs(response: Response) -> list[float]:
    assert response.status == 200, response.body
    return list(response.json()["outputs"][0]["data"])


def port_of(running: RunningServer) -> int:
    return int(running.http_url.rsplit(":", 1)[1])


def executions(client: httpx.Client, model: str) -> int:
    stats = client.get(f"/v2/models/{model}/stats").json()
    return int(stats["model_stats"][0]["execution_count"])


@pytest.fixture(scope="module")
def served() -> Iterator[RunningServer]:
    with serve_in_thread(REPOS / "triton_python", grpc=False, metrics=False) as running:
        yield running


@pytest.fixture
def port(served: RunningServer) -> int:
    return port_of(served)


@pytest.fixture
def conn(port: int) -> Iterator[Conn]:
    with Conn(port) as c:
        yield c


# ------------------------------------------------------------------ connection handling


def test_keep_alive_serves_many_requests_on_one_connection(conn: Conn) -> None:
    """HTTP/1.1 keeps the connection open across infer and ASGI requests."""
    for _ in range(3):
        conn.send(infer())
        response = conn.response()
        assert outputs(response) == SUM
        assert "connection" not in response.headers
        conn.send(request("GET", "/v2/health/ready"))
        assert conn.response().status == 200


@pytest.mark.parametrize("path", ["/v2/models/add_sub/infer", "/v2/health/ready"])
def test_connection_close_is_honoured(conn: Conn, path: str) -> None:
    """``Connection: close`` gets ``connection: close`` back, then the server closes."""
    method, body = ("POST", ADD_SUB) if path.endswith("/infer") else ("GET", b"")
    conn.send(request(method, path, body, headers={"Connection": "close"}))
    response = conn.response()
    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert conn.at_eof()


def test_http_10_closes_unless_asked_to_keep_alive(port: int) -> None:
    """HTTP/1.0 closes after the response, unless it sent ``Connection: keep-alive``."""
    with Conn(port) as plain:
        plain.send(infer(version="1.0"))
        assert outputs(plain.response()) == SUM
        assert plain.at_eof()
    with Conn(port) as kept:
        for _ in range(2):
            kept.send(infer(version="1.0", headers={"Connection": "keep-alive"}))
            response = kept.response()
            assert outputs(response) == SUM
            assert response.headers["connection"] == "keep-alive"
        kept.send(request("GET", "/v2", version="1.0", headers={"Connection": "keep-alive"}))
        assert kept.response().json()["name"]


def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    """Requests sent back to back before any answer get their answers in request order."""
    other = json.dumps({
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [10, 20, 30, 40]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": B},
        ]
    }).encode()
    conn.send(infer() + request("GET", "/v2/health/live") + infer(body=other) + request("GET", "/v2") + infer())
    assert outputs(conn.response()) == SUM
    assert conn.response().status == 200
    assert outputs(conn.response()) == [11.0, 21.0, 31.0, 41.0]
    assert "extensions" in conn.response().json()
    assert outputs(conn.response()) == SUM


def test_chunked_request_body(conn: Conn) -> None:
    """A chunked infer body, sent in pieces, is de-chunked and served."""
    conn.send(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    third = len(ADD_SUB) // 3
    for piece in (ADD_SUB[:third], ADD_SUB[third : 2 * third], ADD_SUB[2 * third :]):
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.02)  # pacing, not a synchroniser: each piece tends to arrive on its own
    conn.send(b"0\r\n\r\n")
    assert outputs(conn.response()) == SUM
    conn.send(b"POST /v2/repository/index HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(b"2\r\n{}\r\n0\r\n\r\n")
    assert conn.response().status == 200


@pytest.mark.parametrize("path", ["/v2/models/add_sub/infer", "/v2/repository/index"])
def test_expect_100_continue(conn: Conn, path: str) -> None:
    """With ``Expect: 100-continue`` the server asks for the body before reading it."""
    body = ADD_SUB if path.endswith("/infer") else b"{}"
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    conn.send(head.encode())
    assert conn.response().status == 100
    conn.send(body)
    assert conn.response().status == 200


def test_expect_100_continue_over_the_limit_is_413_at_once() -> None:
    """An over-limit body announced with 100-continue is refused before it is sent."""
    with (
        serve_in_thread(REPOS / "triton_python", grpc=False, metrics=False, http_max_body_size=1024) as small,
        Conn(port_of(small)) as c,
    ):
        c.send(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        response = c.response()
        assert response.status == 413 and response.headers["connection"] == "close"
        assert "1024" in response.json()["error"]
        assert c.at_eof()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v2 HTTP/9.9\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    ],
)
def test_malformed_request_is_400_and_closes(conn: Conn, garbage: bytes) -> None:
    """An unparseable request is answered 400 with a JSON error, after the requests before it,
    and the connection closes."""
    conn.send(request("GET", "/v2/health/live") + garbage)
    assert conn.response().status == 200
    response = conn.response()
    assert response.status == 400 and response.headers["connection"] == "close"
    assert "malformed" in response.json()["error"]
    assert conn.at_eof()


def test_malformed_chunked_body_is_400_and_closes(conn: Conn) -> None:
    """A broken chunk in the body of an infer request is a 400, then the connection closes."""
    conn.send(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(b"3\r\n{\"i\r\nzz\r\n")
    response = conn.response()
    assert response.status == 400 and response.headers["connection"] == "close"
    assert conn.at_eof()


def test_head_request_gets_headers_only(conn: Conn) -> None:
    """HEAD through the bridge sends the head without the body; the connection stays usable."""
    conn.send(request("HEAD", "/v2"))
    response = conn.response(head_only=True)
    assert response.status == 200 and int(response.headers["content-length"]) > 0
    conn.send(request("GET", "/v2/health/live"))
    assert conn.response().status == 200


def test_errors_keep_the_connection_open(conn: Conn) -> None:
    """An infer error (unknown model) or an unknown route is an answer, not a reason to close."""
    conn.send(infer(model="nope"))
    response = conn.response()
    assert response.status == 404 and "nope" in response.json()["error"]
    conn.send(request("GET", "/nothing/here"))
    assert conn.response().status == 404
    conn.send(request("GET", "/v2/models/add_sub/infer"))
    assert conn.response().status == 405
    conn.send(infer())
    assert outputs(conn.response()) == SUM


def test_large_response_to_a_slow_reader_is_backpressured(served: RunningServer) -> None:
    """A response far larger than the socket buffers, to a client that does not read: the
    server pauses writing and serves nothing more on that connection (the pipelined request
    behind it waits) while other connections are served; once the client reads, the response
    arrives intact and the next request is answered."""
    size = 8 * 1024 * 1024
    body = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["a" * size]}]})
    with httpx.Client(base_url=f"http://{served.http_url}", timeout=60) as client, Conn(port_of(served)) as c:
        strings, adds = executions(client, "string_case"), executions(client, "add_sub")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(infer(model="string_case", body=body.encode()) + infer())
        wait_until(lambda: executions(client, "string_case") == strings + 1, what="the large response was computed")
        # Another connection is served meanwhile; the pipelined request is not.
        other = client.post("/v2/models/add_sub/infer", content=ADD_SUB)
        assert other.status_code == 200 and executions(client, "add_sub") == adds + 1
        response = c.response()
        assert response.status == 200
        upper = response.json()["outputs"][0]
        assert upper["name"] == "UPPER" and upper["data"] == ["A" * size]
        assert outputs(c.response()) == SUM
        assert executions(client, "add_sub") == adds + 2


def test_sse_stream_through_the_bridge(port: int) -> None:
    """generate_stream's events arrive chunked over HTTP/1.1 (connection kept) and
    close-delimited over HTTP/1.0."""
    with serve_in_thread(REPOS / "decoupled", grpc=False, metrics=False) as decoupled:
        dport = port_of(decoupled)
        stream = request("POST", "/v2/models/repeat/generate_stream", b'{"N": 3}')
        with Conn(dport) as c:
            for _ in range(2):
                c.send(stream)
                response = c.response()
                assert response.status == 200
                assert response.headers["transfer-encoding"] == "chunked"
                assert response.headers["content-type"].startswith("text/event-stream")
                events = [json.loads(line[6:]) for line in response.body.decode().splitlines() if line]
                assert [e["OUT"] for e in events] == [0, 1, 2]
        with Conn(dport) as old:
            old.send(request("POST", "/v2/models/repeat/generate_stream", b'{"N": 2}', version="1.0"))
            response = old.response()
            assert "transfer-encoding" not in response.headers and "content-length" not in response.headers
            assert response.headers["connection"] == "close"
            assert response.body.count(b"data: ") == 2


def slow_body(ms: int) -> bytes:
    return json.dumps({"inputs": [{"name": "SLEEP_MS", "datatype": "INT32", "shape": [1, 1], "data": [ms]}]}).encode()


def test_disconnect_cancels_the_queued_request(slow_gate: FileGate) -> None:
    """A client that hangs up while its infer request waits takes it off the queue at once:
    the model never runs it, and the server goes on serving."""
    with (
        serve_in_thread(REPOS / "slow", grpc=False, metrics=False) as slow,
        httpx.Client(base_url=f"http://{slow.http_url}", timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        try:
            busy = pool.submit(client.post, "/v2/models/slow/infer", content=slow_body(-1))
            slow_gate.wait_started()
            with Conn(port_of(slow)) as c:
                c.send(infer(model="slow", body=slow_body(0)))
                wait_until(lambda: slow.in_flight("slow") == 2, what="the second request is queued")
            wait_until(lambda: slow.in_flight("slow") == 1, what="the disconnected request left the queue")
        finally:
            slow_gate.release()
        assert busy.result().status_code == 200
        assert executions(client, "slow") == 1
        assert client.post("/v2/models/slow/infer", content=slow_body(0)).status_code == 200
        assert executions(client, "slow") == 2


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=60).close()
    except ConnectionRefusedError:
        return True
    return False


def test_graceful_shutdown_finishes_requests_in_flight(slow_gate: FileGate) -> None:
    """On stop the server refuses new connections and closes idle ones at once, answers the
    request in flight (with ``connection: close``), then closes its connection."""
    with contextlib.ExitStack() as stack, contextlib.ExitStack() as slow_stack:
        slow = slow_stack.enter_context(serve_in_thread(REPOS / "slow", grpc=False, metrics=False))
        sport = port_of(slow)
        idle, busy = stack.enter_context(Conn(sport)), stack.enter_context(Conn(sport))
        idle.send(request("GET", "/v2/health/live"))
        assert idle.response().status == 200
        busy.send(infer(model="slow", body=slow_body(-1)))
        slow_gate.wait_started()
        stop = threading.Thread(target=slow_stack.close)  # returns once the request is answered
        stop.start()
        try:
            wait_until(lambda: refused(sport), what="new connections are refused")
            assert idle.at_eof()
        finally:
            slow_gate.release()
            response = busy.response()
            stop.join()
        assert response.status == 200 and response.headers["connection"] == "close"
        assert busy.at_eof()


# ------------------------------------------------------------------- the ASGI bridge alone


class _NoInfer:
    """An infer responder that claims no path: every request goes to the ASGI app."""

    def target(self, path: str) -> tuple[str, str] | None:
        return None

    async def reply(self, model: str, version: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
        raise AssertionError("not an infer request")


@contextlib.contextmanager
def serve_app(app: Any, **kwargs: Any) -> Iterator[int]:
    """Run :func:`serve_http11` with ``app`` on a background event loop; yield its port."""
    with anyio.from_thread.start_blocking_portal() as portal:
        future, port = portal.start_task(
            functools.partial(serve_http11, app, _NoInfer(), host="127.0.0.1", port=0, **kwargs)
        )
        try:
            yield port
        finally:
            future.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError):
                future.result()


async def _echo_scope(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with its scope and the body it received, then checks receive's end."""
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        chunks.append(message["body"])
        if not message.get("more_body"):
            break
    doc = {k: v for k, v in scope.items() if k in ("type", "http_version", "method", "scheme", "path", "root_path")}
    doc.update(
        raw_path=scope["raw_path"].decode(),
        query_string=scope["query_string"].decode(),
        headers=[[k.decode(), v.decode()] for k, v in scope["headers"]],
        client=list(scope["client"]),
        server=list(scope["server"]),
        body=b"".join(chunks).decode(),
    )
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(doc).encode()})
    assert (await receive())["type"] == "http.disconnect"  # once the response is complete


def test_bridge_scope_and_body() -> None:
    """The scope carries every ASGI HTTP key, the path decoded; the body arrives in full and a
    single-message response gets a Content-Length."""
    with serve_app(_echo_scope) as port, Conn(port) as c:
        c.send(request("POST", "/a%20b/c?x=1&y=%20", b"hello", headers={"X-Thing": "v"}))
        response = c.response()
        assert response.headers["content-length"] == str(len(response.body))
        doc = response.json()
        assert doc["type"] == "http" and doc["http_version"] == "1.1" and doc["method"] == "POST"
        assert doc["scheme"] == "http" and doc["root_path"] == ""
        assert doc["path"] == "/a b/c" and doc["raw_path"] == "/a%20b/c" and doc["query_string"] == "x=1&y=%20"
        assert ["x-thing", "v"] in doc["headers"] and ["content-length", "5"] in doc["headers"]
        assert doc["client"][0] == "127.0.0.1" and doc["server"] == ["127.0.0.1", port]
        assert doc["body"] == "hello"
        c.send(request("GET", "/again", version="1.0"))
        assert c.response().json()["http_version"] == "1.0"


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one ", b"", b"two ", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_bridge_streams_chunked_or_close_delimited() -> None:
    """A response of several body messages without a length is chunked over HTTP/1.1, read to
    the connection's end over HTTP/1.0."""
    with serve_app(_stream) as port:
        with Conn(port) as c:
            for _ in range(2):
                c.send(request("GET", "/"))
                response = c.response()
                assert response.headers["transfer-encoding"] == "chunked" and response.body == b"one two three"
        with Conn(port) as old:
            old.send(request("GET", "/", version="1.0", headers={"Connection": "keep-alive"}))
            response = old.response()
            assert response.headers["connection"] == "close" and response.body == b"one two three"


async def _broken(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/raise":
        raise RuntimeError("app bug")
    if scope["path"] == "/half":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
    # "/nothing": returns without a response


@pytest.mark.parametrize("path", ["/raise", "/nothing"])
def test_bridge_app_failure_is_500(path: str, caplog: pytest.LogCaptureFixture) -> None:
    """An app that raises, or returns without answering, gets the client a 500 and a log."""
    with serve_app(_broken) as port, caplog.at_level(logging.ERROR, logger="dagserve.frontends"), Conn(port) as c:
        c.send(request("GET", path))
        response = c.response()
        assert response.status == 500 and response.headers["connection"] == "close"
        assert c.at_eof()
    assert any(path in r.getMessage() for r in caplog.records)


def test_bridge_response_cut_short_closes_the_connection() -> None:
    """An app that stops mid-body leaves the client a connection that closes, not one that
    hangs or is reused."""
    with serve_app(_broken) as port, Conn(port) as c:
        c.send(request("GET", "/half"))
        with pytest.raises(ConnectionError):
            c.response()


def test_idle_keep_alive_connections_are_closed() -> None:
    """A keep-alive connection idle past the timeout is closed by the server, and so is one
    that never sent a request."""
    with serve_app(_echo_scope, keep_alive_timeout=0.2) as port, Conn(port) as c, Conn(port) as silent:
        c.send(request("GET", "/"))
        assert c.response().status == 200
        assert c.at_eof()
        assert silent.at_eof()


# ---------------------------------------------------------------------------- internals


class _Transport(asyncio.Transport):
    """Records writes; everything else a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (server end, client end) pair of TCP sockets on the loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_end, _ = listener.accept()
    client.setblocking(False)
    return server_end, client


async def _receive_until_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = b""
    with anyio.fail_after(60):
        while chunk := await loop.sock_recv(sock, 65536):
            data += chunk
    return data


@pytest.mark.anyio
async def test_a_request_waiting_unread_when_the_server_stops_is_answered() -> None:
    """A client that sends on an idle keep-alive connection just as the server stops has its
    request answered (with ``connection: close``), not the connection closed under it: the
    request's bytes, already in the socket but not yet read by the event loop, count as a
    request in progress. Reading is paused here to hold them unread at the stop."""
    loop = asyncio.get_running_loop()
    server_end, client = _tcp_pair()
    async with anyio.create_task_group() as tg:
        connection = _Connection(_State(_echo_scope, _NoInfer(), tg))
        transport, _ = await loop.connect_accepted_socket(lambda: connection, server_end)
        await loop.sock_sendall(client, request("GET", "/first"))
        first = b""
        with anyio.fail_after(60):
            while b'"/first"' not in first:
                first += await loop.sock_recv(client, 65536)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first

        transport.pause_reading()  # idle now; what the client sends next stays in the socket
        await loop.sock_sendall(client, request("GET", "/second"))
        connection.shutdown()
        assert not transport.is_closing()
        transport.resume_reading()
        second = await _receive_until_eof(loop, client)
    client.close()
    assert second.startswith(b"HTTP/1.1 200") and b'"/second"' in second
    assert b"connection: close" in second


@pytest.mark.anyio
async def test_an_idle_connection_is_closed_at_once_when_the_server_stops() -> None:
    """With nothing sent and nothing waiting, a graceful stop closes a keep-alive connection
    straight away."""
    loop = asyncio.get_running_loop()
    server_end, client = _tcp_pair()
    async with anyio.create_task_group() as tg:
        connection = _Connection(_State(_echo_scope, _NoInfer(), tg))
        transport, _ = await loop.connect_accepted_socket(lambda: connection, server_end)
        await loop.sock_sendall(client, request("GET", "/first"))
        first = b""
        with anyio.fail_after(60):
            while b'"/first"' not in first:
                first += await loop.sock_recv(client, 65536)
        connection.shutdown()
        assert transport.is_closing()
        assert await _receive_until_eof(loop, client) == b""
    client.close()


async def _answered(loop: asyncio.AbstractEventLoop, client: socket.socket, path: str) -> bytes:
    """Send ``GET path`` and read until its echo has come back."""
    await loop.sock_sendall(client, request("GET", path))
    answer = b""
    with anyio.fail_after(60):
        while f'"{path}"'.encode() not in answer:
            answer += await loop.sock_recv(client, 65536)
    return answer


@contextlib.asynccontextmanager
async def _used_connection(
    stop_grace: float,
) -> AsyncIterator[tuple[_State, asyncio.BaseTransport, socket.socket, bytes]]:
    """A server's state with ``stop_grace`` and one connection to it that has just been used:
    ``(state, the server's transport, the client's socket, the answer to GET /first)``."""
    loop = asyncio.get_running_loop()
    server_end, client = _tcp_pair()
    try:
        async with anyio.create_task_group() as tg:
            state = _State(_echo_scope, _NoInfer(), tg)
            state.stop_grace = stop_grace
            connection = _Connection(state)
            transport, _ = await loop.connect_accepted_socket(lambda: connection, server_end)
            yield state, transport, client, await _answered(loop, client, "/first")
    finally:
        client.close()


@pytest.mark.anyio
async def test_a_request_sent_just_after_the_stop_on_a_recently_used_connection_is_answered() -> None:
    """A client may send on its keep-alive connection just after the server began to stop
    (it took the connection before, and was slow to write: measured 3 ms after SIGTERM under
    load). A connection used just before the stop stays open for the stop's grace, and the
    request is answered with ``connection: close``; then the drain ends."""
    loop = asyncio.get_running_loop()
    # The grace is ample: the request comes long before, and the drain ends with it.
    async with _used_connection(stop_grace=120.0) as (state, transport, client, first):
        assert b"connection: close" not in first
        drained = anyio.Event()

        async def drain() -> None:
            await state.drain()
            drained.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await wait_until_async(lambda: state.stopping)
            assert not transport.is_closing() and not drained.is_set()
            second = await _answered(loop, client, "/second")
            assert second.startswith(b"HTTP/1.1 200") and b"connection: close" in second
            assert await _receive_until_eof(loop, client) == b""  # then the connection closes
            with anyio.fail_after(60):
                await drained.wait()


@pytest.mark.anyio
async def test_a_recently_used_idle_connection_closes_when_the_stop_grace_ends() -> None:
    """Nothing comes on the recently used connection: it closes when the grace is over, and
    the drain returns."""
    async with _used_connection(stop_grace=1.0) as (state, transport, client, _):
        with anyio.fail_after(60):
            await state.drain()
        assert transport.is_closing()
        assert await _receive_until_eof(asyncio.get_running_loop(), client) == b""


@pytest.mark.anyio
async def test_a_connection_idle_since_before_the_recent_past_closes_at_once_in_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle server stops at once: a connection last used before the recent past gets no
    grace (here "recent" is shrunk to nothing, instead of waiting a second)."""
    monkeypatch.setattr(http_server, "STOP_RECENT", 0.0)
    # A grace it must not get: the drain would wait for it.
    async with _used_connection(stop_grace=120.0) as (state, transport, _, _):
        with anyio.fail_after(60):
            await state.drain()
        assert transport.is_closing()


@pytest.mark.anyio
async def test_infer_response_is_one_write() -> None:
    """An infer response, head and body, leaves in a single transport write."""

    class Answer(_NoInfer):
        def target(self, path: str) -> tuple[str, str]:
            return "m", ""

        async def reply(self, model: str, version: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
            return Reply(200, [(b"content-type", b"application/json")], b'{"ok":' + body + b"}")

    async with anyio.create_task_group() as tg:
        connection = _Connection(_State(_echo_scope, Answer(), tg))
        transport = _Transport()
        connection.connection_made(transport)
        connection.data_received(b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n")
        connection.data_received(b"true")
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert transport.writes == [
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"
        ]
        connection.connection_lost(None)
