"""--http-max-body-size applies to every route that takes a body, not only /infer; and the
request head (headers) is bounded too."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dagserve.frontends.limits import HttpLimits
from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "triton_python"
LIMIT = 1024


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, grpc=False, metrics=False, http_max_body_size=LIMIT,
                         model_control_mode="explicit", load_models=("add_sub",)) as server:
        yield server


@pytest.mark.parametrize("path", [
    "/v2/repository/index",
    "/v2/repository/models/add_sub/load",
    "/v2/repository/models/add_sub/unload",
    "/v2/models/add_sub/generate",
    "/v2/models/add_sub/generate_stream",
    "/v2/models/add_sub/infer",
])
def test_every_body_route_refuses_a_body_over_the_limit(running: RunningServer, path: str) -> None:
    """A JSON body one byte past the limit is a 413 naming the limit on every POST route, and
    the model is still loaded and ready afterwards (an unload body over the limit did nothing)."""
    body = b"{" + b" " * (LIMIT - 1) + b"}"
    assert len(body) == LIMIT + 1
    with httpx.Client(base_url=f"http://{running.http_url}", timeout=60) as client:
        reply = client.post(path, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 413, reply.text
        assert str(LIMIT) in reply.json()["error"]
        assert client.get("/v2/models/add_sub/ready").status_code == 200


def test_oversized_headers_are_refused(running: RunningServer) -> None:
    """A request head of 1 MiB is refused with 431 (or the connection is closed) instead of read whole."""
    host, port = running.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
            reply = sock.recv(200)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431 "), reply


def _exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes (or the client sees a reset)."""
    reply = b""
    try:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            reply += chunk
    except (BrokenPipeError, ConnectionResetError):
        pass
    return reply


@pytest.fixture(scope="module")
def small_heads() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, grpc=False, metrics=False, http_limits=HttpLimits(max_header_size=4096)) as server:
        yield server


@pytest.mark.parametrize("split", [False, True])
def test_a_head_over_the_limit_is_431(small_heads: RunningServer, split: bool) -> None:
    """A request head past --http-max-header-size is answered 431 naming the limit and the
    connection closes, whether it arrives whole or in pieces; the server keeps serving."""
    host, port = small_heads.http_url.rsplit(":", 1)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        if split:
            sock.sendall(head[:3000])
            head = head[3000:]
        reply = _exchange(sock, head)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"4096" in reply and b"connection: close" in reply
    with httpx.Client(base_url=f"http://{small_heads.http_url}", timeout=60) as client:
        assert client.get("/v2/health/live").status_code == 200


def test_many_headers_over_the_limit_are_431(small_heads: RunningServer) -> None:
    """Many small headers adding up past the limit are refused like one large one."""
    host, port = small_heads.http_url.rsplit(":", 1)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(200))
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        reply = _exchange(sock, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]


def test_a_head_under_the_limit_is_served(small_heads: RunningServer) -> None:
    """A head just under the limit is served as usual, also when it is pipelined after another request."""
    host, port = small_heads.http_url.rsplit(":", 1)
    one = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3500 + b"\r\n\r\n"
    last = one.replace(b"Host: x", b"Host: x\r\nConnection: close")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        reply = _exchange(sock, one + last)
    assert reply.count(b"HTTP/1.1 200 ") == 2, reply[:400]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_max_header_size_from_the_cli(how: str) -> None:
    """`dagserve serve` takes the head limit from --http-max-header-size or
    DAGSERVE_HTTP_MAX_HEADER_SIZE: a 4 KiB head is 431 under a 2048-byte limit, a 1 KiB one 200."""
    extra, env = (["--http-max-header-size", "2048"], {}) if how == "flag" else ([], {"DAGSERVE_HTTP_MAX_HEADER_SIZE": "2048"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port", "0",
         "--grpc-port", "-1", "--metrics-port", "-1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := re.search(r"HTTP service listening on (?:http://)?(\S+)", line):
                host, port = match.group(1).rsplit(":", 1)
                break
        else:
            raise AssertionError("the server exited before listening")
        for size, status in ((4096, b"431"), (1024, b"200")):
            head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: " + b"p" * size + b"\r\n\r\n"
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                reply = _exchange(sock, head)
            assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
