"""Running a server with its frontends (HTTP, gRPC, metrics) in one event loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ..engine import Server, ServerOptions
from .restricted import Restrictions
from .tls import TLSConfig

__all__ = ["Addresses", "ServeOptions", "serve"]

DEFAULT_HTTP_MAX_BODY_SIZE = 256 * 1024 * 1024
DEFAULT_GRPC_MAX_MESSAGE_SIZE = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """Where and how the frontends listen. A port of ``None`` disables that frontend; 0 picks a
    free port. Security (docs/security.md): ``*_restricted`` close API categories behind a
    header, ``*_tls`` serve TLS, ``metrics_address`` binds the plain metrics port elsewhere
    than ``host`` (e.g. a private interface)."""

    server: ServerOptions = field(default_factory=ServerOptions)
    host: str = "127.0.0.1"
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    metrics_port: int | None = 8002
    http_max_body_size: int = DEFAULT_HTTP_MAX_BODY_SIZE
    grpc_max_message_size: int = DEFAULT_GRPC_MAX_MESSAGE_SIZE
    http_restricted: Restrictions = field(default_factory=Restrictions)
    grpc_restricted: Restrictions = field(default_factory=Restrictions)
    http_tls: TLSConfig | None = None
    grpc_tls: TLSConfig | None = None
    metrics_address: str | None = None


@dataclass(frozen=True, kw_only=True)
class Addresses:
    """The ``host:port`` each frontend listens on (``None`` when disabled)."""

    http: str | None
    grpc: str | None
    metrics: str | None


async def serve(
    options: ServeOptions,
    *,
    setup: Callable[[Server], Any] | None = None,
    task_status: TaskStatus[tuple[Server, Addresses]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Load the models, start the frontends, report ``(server, addresses)``, serve until
    cancelled; then stop the frontends first and unload the models.

    ``setup`` is called with the server before the frontends start (to register in-process
    models).
    """
    async with Server(options.server) as server:
        if setup is not None:
            await setup(server) if _is_async(setup) else setup(server)
        async with anyio.create_task_group() as tg:
            http = grpc = metrics = None
            if options.http_port is not None:
                from .http import serve_http

                port = await tg.start(functools.partial(
                    serve_http, server, host=options.host, port=options.http_port,
                    max_body_size=options.http_max_body_size,
                    restricted=options.http_restricted, tls=options.http_tls,
                ))
                http = _address(options.host, port)
            if options.grpc_port is not None:
                from .grpc import serve_grpc

                port = await tg.start(functools.partial(
                    serve_grpc, server, host=options.host, port=options.grpc_port,
                    max_message_size=options.grpc_max_message_size,
                    restricted=options.grpc_restricted, tls=options.grpc_tls,
                ))
                grpc = _address(options.host, port)
            if options.metrics_port is not None:
                from .metrics import serve_metrics

                metrics_host = options.metrics_address or options.host
                port = await tg.start(functools.partial(
                    serve_metrics, server, host=metrics_host, port=options.metrics_port
                ))
                metrics = _address(metrics_host, port)
            task_status.started((server, Addresses(http=http, grpc=grpc, metrics=metrics)))


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_async(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
