"""Running an ASGI app with uvicorn inside the caller's event loop, on a port it reports."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

__all__ = ["bind", "serve_asgi"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve_asgi(
    app: Any,
    *,
    host: str,
    port: int,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    **uvicorn_options: Any,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started(port)`` reports the bound port.

    uvicorn installs no signal handlers here: whoever runs the event loop owns the signals.
    On cancellation uvicorn is asked to exit and finishes the requests it has in flight.
    """
    sock = bind(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        **uvicorn_options,
    )
    server = uvicorn.Server(config)
    # The process's signals belong to whoever runs the event loop (the CLI), not to uvicorn.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    async def run_until_exit() -> None:
        # Shielded so that cancellation becomes a graceful exit (should_exit) instead of
        # abandoning uvicorn mid-request.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_until_exit)
        task_status.started(sock.getsockname()[1])
        try:
            await anyio.sleep_forever()
        finally:
            server.should_exit = True
