"""Helpers for testing against a real dagserve server.

:func:`serve_in_thread` runs a server with its frontends on ephemeral loopback ports, in its
own event loop on a background thread, so blocking clients (``tritonclient``) can call it from
the test's thread::

    with serve_in_thread("tests/repos/triton_python") as running:
        client = tritonclient.http.InferenceServerClient(running.http_url)

Tests synchronise on observable state, never on sleeps: :func:`wait_until` (and
:func:`wait_until_async` inside an event loop) poll a condition up to a generous deadline, and
:func:`in_flight` says how many requests are inside a model (queued or executing), e.g. to know
that a second request is queued behind a busy instance.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from .engine import Server, ServerOptions
from .frontends.runner import Addresses, FrontendOptions, serve

__all__ = ["FileGate", "RunningServer", "in_flight", "serve_in_thread", "wait_until", "wait_until_async"]

DEFAULT_TIMEOUT = 60.0  # seconds: generous, because CI machines are small and busy


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

    def in_flight(self, model: str, version: str = "") -> int:
        """:func:`in_flight`, read on the server's event loop."""
        return self.portal.call(in_flight, self.server, model, version)


def in_flight(server: Server, model: str, version: str = "") -> int:
    """How many requests are inside ``model`` (its newest ready version by default) right now:
    queued in its scheduler or executing. A request is counted from the moment it is queued
    until its caller gets the answer or goes away (disconnect, cancel, deadline)."""
    return server.get_version(model, version)._in_flight


class FileGate:
    """A gate in a directory that a test model holds on, across threads and processes.

    The model creates ``started`` when a held call begins and waits until ``release`` exists;
    the test waits for :attr:`started`, does what needs the model busy, then calls :meth:`release`.
    A model may also log each call as a line of ``calls`` (:meth:`calls`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    @property
    def started(self) -> bool:
        return (self.path / "started").exists()

    def wait_started(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        wait_until(lambda: self.started, timeout=timeout, what=f"a held call started ({self.path})")

    async def wait_started_async(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        await wait_until_async(lambda: self.started, timeout=timeout, what=f"a held call started ({self.path})")

    def release(self) -> None:
        (self.path / "release").touch()

    def calls(self) -> list[str]:
        """The lines the model appended to ``calls``, oldest first."""
        path = self.path / "calls"
        return path.read_text().splitlines() if path.exists() else []


def wait_until(condition: Callable[[], object], *, timeout: float = DEFAULT_TIMEOUT, what: str = "") -> None:
    """Poll ``condition`` until it is true; raise ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout} s: {what or condition}")
        time.sleep(0.005)


async def wait_until_async(
    condition: Callable[[], object | Awaitable[object]], *, timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> None:
    """:func:`wait_until` inside an event loop: polls without blocking it."""
    deadline = anyio.current_time() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if anyio.current_time() > deadline:
            raise TimeoutError(f"not true after {timeout} s: {what or condition}")
        await anyio.sleep(0.005)


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
    they name a :class:`FrontendOptions` field (e.g. ``http_max_body_size``), to that. On exit the
    frontends stop, then every model unloads; an error while shutting down is raised (after
    the body's own exception, if any). ``DAGSERVE_GRPC_SERVER``, when set, is the default of
    the ``grpc_server`` option, as it is of ``dagserve serve --grpc-server``.
    """
    if "grpc_server" not in options and os.environ.get("DAGSERVE_GRPC_SERVER"):
        # The test suite's switch to run every gRPC test against the other gRPC server.
        options["grpc_server"] = os.environ["DAGSERVE_GRPC_SERVER"]
    serve_fields = set(FrontendOptions.__dataclass_fields__)
    serve_kwargs = {k: v for k, v in options.items() if k in serve_fields}
    server_kwargs = {k: v for k, v in options.items() if k not in serve_fields}
    if repository is not None:
        server_kwargs["model_repository"] = Path(repository)
    serve_options = FrontendOptions(
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
            with contextlib.suppress(concurrent.futures.CancelledError):
                future.result()
