"""Running an ASGI app with uvicorn inside the caller's event loop, on a port it reports."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

from .limits import HttpLimits

__all__ = ["bind", "serve_asgi"]


class _UvicornServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the CLI owns SIGINT/SIGTERM, and
    cancellation is how an embedded server is stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one).

    The socket is created with ``proto=IPPROTO_TCP``: asyncio sets TCP_NODELAY only on
    accepted sockets whose protocol says TCP, and without it Nagle's algorithm holds back the
    response body (uvicorn writes headers and body separately) for the client's delayed ACK,
    about 40 ms per request.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_asgi(
    app: Any,
    *,
    host: str,
    port: int,
    shutdown_timeout: int = 30,
    limits: HttpLimits | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled.

    The socket is bound first, so ``port=0`` works: ``task_status.started(port)`` reports the
    port actually bound. uvicorn installs no signal handlers and leaves logging configuration
    alone. On cancellation it stops accepting, lets in-flight requests finish (for at most
    ``shutdown_timeout`` seconds), then the cancellation propagates. Of ``limits``, uvicorn
    honours the keep-alive timeout and the connection limit (as its ``limit_concurrency``).

    Raises:
        OSError: the address cannot be bound.
    """
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        log_config=None,  # don't let uvicorn reconfigure the process's logging
        access_log=False,
        http="auto",  # httptools when installed, else h11
        ws="none",
        server_header=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting: one middleware less per request
        timeout_graceful_shutdown=shutdown_timeout,
    )
    if limits is not None:
        config.timeout_keep_alive = max(1, round(limits.keep_alive_timeout))
        config.limit_concurrency = limits.max_connections or None
    uv_server = _UvicornServer(config)
    sock = bind(host, port)
    try:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                # Shielded so that cancelling us becomes uvicorn's graceful exit (should_exit)
                # instead of abandoning connections mid-response.
                try:
                    with anyio.CancelScope(shield=True):
                        await uv_server.serve(sockets=[sock])
                finally:
                    tg.cancel_scope.cancel()  # uvicorn stopped by itself: so do we

            tg.start_soon(run)
            task_status.started(sock.getsockname()[1])
            try:
                await anyio.sleep_forever()
            finally:
                uv_server.should_exit = True
    finally:
        sock.close()
