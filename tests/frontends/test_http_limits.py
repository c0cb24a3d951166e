"""--http-max-body-size applies to every route that takes a body, not only /infer; and the
request head (headers) is bounded too."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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


@pytest.mark.xfail(strict=True, reason="no limit on the size of the request head yet: the HTTP server "
                                       "keeps reading headers without bound (reported; frontends/http_server.py)")
def test_oversized_headers_are_refused(running: RunningServer) -> None:
    """A request head of 1 MiB is refused with 431 (or the connection is closed) instead of read whole."""
    host, port = running.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
            reply = sock.recv(200)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200"), reply
