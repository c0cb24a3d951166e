"""Helpers for testing against a real dagserve server.

:func:`serve_in_thread` runs a server with its frontends on ephemeral loopback ports, in its
own event loop on a background thread, so blocking clients (``tritonclient``) can call it from
the test's thread::

    with serve_in_thread("tests/repos/triton_python") as running:
        client = tritonclient.http.InferenceServerClient(running.http_url)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread

from .engine import Server, ServerOptions
from .frontends.runner import Addresses, ServeOptions, serve

__all__ = ["RunningServer", "serve_in_thread"]


@dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`serve_in_thread`.

    ``portal`` runs coroutines on the server's event loop, e.g.
    ``running.portal.call(running.server.load_model, "m")``.
    """

    server: Server
    addresses: Addresses
    portal: anyio.from_thread.BlockingPortal

    @property
    def http_url(self) -> str:
        assert self.addresses.http is not None, "the HTTP frontend is disabled"
        return self.addresses.http

    @property
    def grpc_url(self) -> str:
        assert self.addresses.grpc is not None, "the gRPC frontend is disabled"
        return self.addresses.grpc

    @property
    def metrics_url(self) -> str:
        assert self.addresses.metrics is not None, "the metrics frontend is disabled"
        return self.addresses.metrics


@contextlib.contextmanager
def serve_in_thread(
    repository: str | Path | None = None,
    *,
    http: bool = True,
    grpc: bool = True,
    metrics: bool = True,
    setup: Callable[[Server], Any] | None = None,
    **options: Any,
) -> Iterator[RunningServer]:
    """Serve ``repository`` on 127.0.0.1 with every enabled frontend on a free port.

    Keyword ``options`` go to :class:`ServerOptions` (e.g. ``model_control_mode``) or, when
    they name a :class:`ServeOptions` field (e.g. ``http_max_body_size``), to that. On exit the
    frontends stop, then every model unloads.
    """
    serve_fields = set(ServeOptions.__dataclass_fields__)
    serve_kwargs = {k: v for k, v in options.items() if k in serve_fields}
    server_kwargs = {k: v for k, v in options.items() if k not in serve_fields}
    if repository is not None:
        server_kwargs["model_repository"] = Path(repository)
    serve_options = ServeOptions(
        server=ServerOptions(**server_kwargs),
        http_port=0 if http else None,
        grpc_port=0 if grpc else None,
        metrics_port=0 if metrics else None,
        **serve_kwargs,
    )
    with anyio.from_thread.start_blocking_portal() as portal:
        future, (server, addresses) = portal.start_task(functools.partial(serve, serve_options, setup=setup))
        try:
            yield RunningServer(server, addresses, portal)
        finally:
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result()
