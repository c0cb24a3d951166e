"""Running a server with its frontends (HTTP, gRPC, metrics) in one event loop, and stopping
it without losing a request.

Cancelling :func:`serve` is a graceful stop, in this order: the server turns not ready at
once (HTTP ``/v2/health/ready`` 400, gRPC ``ServerReady`` false, gRPC health NOT_SERVING);
the frontends close their listening sockets, so new connections are refused; every request
in flight finishes (plain models, pipelines and their BLS calls, decoupled streams; an HTTP
keep-alive connection answers the request it is reading, with ``connection: close``), for at
most ``exit_timeout_secs``, after which what is left is cancelled; only then do the models
unload. An idle server stops at once; a busy one as soon as its last request ends.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._deprecation import renamed
from ..engine import Server, ServerOptions
from ..engine.peers import Peers
from ..shared_memory import SharedMemoryRegistry
from .accept import Balance
from .grpc_compression import COMPRESSION_LEVELS
from .limits import GrpcKeepalive, HttpLimits
from .restricted import Restrictions
from .tls import TLSConfig

if TYPE_CHECKING:
    from .grpc_native.relay import Relay

__all__ = ["Addresses", "FrontendOptions", "format_address", "serve"]

log = logging.getLogger("dagserve.frontends")

DEFAULT_HTTP_MAX_BODY_SIZE = 256 * 1024 * 1024
DEFAULT_GRPC_MAX_MESSAGE_SIZE = 2**31 - 1
DEFAULT_EXIT_TIMEOUT_SECS = 30.0
GRPC_SERVERS = ("native", "grpcio")
"""The gRPC servers to choose from (``grpc_server``): dagserve's own HTTP/2 server
(:mod:`.grpc_native`, the default: a third of grpc.aio's CPU per call), or grpcio's grpc.aio;
the same services and options on either."""
DEFAULT_GRPC_SERVER = "native"


@dataclass(frozen=True, kw_only=True)
class FrontendOptions:
    """Where and how the frontends listen, and the :class:`ServerOptions` of the server they
    serve (this was ``ServeOptions``, a name too close to ``ServerOptions``). A port of
    ``None`` disables that frontend; 0 picks a free port. Security (docs/security.md): ``*_restricted`` close API categories behind a
    header, ``*_tls`` serve TLS, ``metrics_address`` binds the plain metrics port elsewhere
    than ``host`` (e.g. a private interface). ``exit_timeout_secs`` bounds the wait for requests in flight on a graceful stop
    (Triton's ``--exit-timeout-secs``); ``http_limits`` and ``grpc_keepalive`` bound slow and
    idle clients. ``allow_client_shm`` lets clients register and use shared-memory regions
    (Triton's ``--allow-client-shm``; off by default, as Triton's). ``allow_cpu_metrics`` /
    ``allow_gpu_metrics`` add CPU and GPU gauges to ``/metrics``, polled every
    ``metrics_interval_ms`` (Triton's flags of those names). ``reuse_port`` shares the ports
    with the server's other worker processes (``dagserve serve --workers N``). ``grpc_server``
    picks the gRPC server (:data:`GRPC_SERVERS`: ``native``, the default, or ``grpcio``).
    ``grpc_infer_response_compression_level`` (``none``, the default, ``low``, ``medium``,
    ``high``) compresses gRPC inference responses, as Triton's flag of that name
    (:mod:`.grpc_compression`)."""

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
    exit_timeout_secs: float = DEFAULT_EXIT_TIMEOUT_SECS
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    grpc_keepalive: GrpcKeepalive = field(default_factory=GrpcKeepalive)
    allow_client_shm: bool = False
    allow_cpu_metrics: bool = True
    allow_gpu_metrics: bool = True
    metrics_interval_ms: float = 2000.0
    reuse_port: bool = False
    grpc_server: str = DEFAULT_GRPC_SERVER
    grpc_infer_response_compression_level: str = "none"

    def __post_init__(self) -> None:
        if self.grpc_server not in GRPC_SERVERS:
            raise ValueError(f"--grpc-server must be one of {', '.join(GRPC_SERVERS)}, got {self.grpc_server!r}")
        if self.grpc_infer_response_compression_level not in COMPRESSION_LEVELS:
            raise ValueError(f"--grpc-infer-response-compression-level must be one of {', '.join(COMPRESSION_LEVELS)}, "
                             f"got {self.grpc_infer_response_compression_level!r}")
        if self.exit_timeout_secs < 0:
            raise ValueError(f"exit timeout must not be negative, got {self.exit_timeout_secs}")
        if not self.metrics_interval_ms > 0:
            raise ValueError(f"--metrics-interval-ms must be a positive number, got {self.metrics_interval_ms}")


@dataclass(frozen=True, kw_only=True)
class Addresses:
    """The ``host:port`` each frontend listens on (``None`` when disabled)."""

    http: str | None
    grpc: str | None
    metrics: str | None


async def serve(
    options: FrontendOptions,
    *,
    setup: Callable[[Server], Any] | None = None,
    peers: Peers | None = None,
    balance: Balance | None = None,
    relay: Relay | None = None,
    task_status: TaskStatus[tuple[Server, Addresses]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Load the models, start the frontends, report ``(server, addresses)``, serve until
    cancelled; then stop gracefully (see the module docstring) and return.

    ``setup`` is called with the server before the frontends start (to register in-process
    models). ``peers`` are the server's other worker processes (:attr:`Server.peers`);
    ``balance`` places the HTTP and native gRPC connections evenly over them (:mod:`.accept`);
    ``relay`` spreads the native gRPC server's calls over them (:mod:`.grpc_native.relay`). Cancelled while starting, it stops at once. Once started, cancellation only
    begins the graceful stop, which runs shielded for up to ``exit_timeout_secs`` plus the
    models' unloading; a caller that must stop sooner exits the process.
    """
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        try:
            started = await tg.start(_serve, options, setup, peers, balance, relay, stop)
            task_status.started(started)
            await anyio.sleep_forever()
        finally:
            stop.set()


async def _serve(
    options: FrontendOptions,
    setup: Callable[[Server], Any] | None,
    peers: Peers | None,
    balance: Balance | None,
    relay: Relay | None,
    stop: anyio.Event,
    *,
    task_status: TaskStatus[tuple[Server, Addresses]],
) -> None:
    with anyio.CancelScope() as scope:
        server = Server(options.server)
        server.peers = peers
        async with server:
            if setup is not None:
                await setup(server) if _is_async(setup) else setup(server)
            # One registry for both protocols (a region registered over HTTP serves gRPC
            # requests), emptied once the frontends have drained.
            shared_memory = SharedMemoryRegistry(allow_client_shm=options.allow_client_shm)
            try:
                async with anyio.create_task_group() as frontends:
                    addresses = await _start_frontends(frontends, server, options, shared_memory, balance, relay)
                    # From here the stop is ours to run: the caller's cancellation only sets `stop`.
                    scope.shield = True
                    task_status.started((server, addresses))
                    await stop.wait()
                    log.info(
                        "stopping: not ready; draining requests in flight (at most %gs)", options.exit_timeout_secs
                    )
                    server.begin_drain()
                    started = anyio.current_time()
                    frontends.cancel_scope.cancel()  # each frontend drains, then returns
            finally:
                shared_memory.close()
            log.info("drained in %.2fs; unloading models", anyio.current_time() - started)


async def _start_frontends(
    tg: TaskGroup, server: Server, options: FrontendOptions, shared_memory: SharedMemoryRegistry,
    balance: Balance | None = None, relay: Relay | None = None,
) -> Addresses:
    timeout = options.exit_timeout_secs
    http = grpc = metrics = None
    if options.http_port is not None:
        from .http import serve_http

        port = await tg.start(functools.partial(
            serve_http, server, host=options.host, port=options.http_port,
            max_body_size=options.http_max_body_size, shutdown_timeout=timeout, limits=options.http_limits,
            restricted=options.http_restricted, tls=options.http_tls, shared_memory=shared_memory,
            reuse_port=options.reuse_port, balance=balance,
        ))
        http = format_address(options.host, port)
    if options.grpc_port is not None:
        grpc_args: dict[str, Any] = {}
        serve_grpc: Callable[..., Any]
        if options.grpc_server == "native":
            from .grpc_native import serve_grpc_native

            serve_grpc = serve_grpc_native
            grpc_args["balance"] = balance  # grpcio accepts in its C core: its connections stay
            grpc_args["relay"] = relay
        else:
            from .grpc import serve_grpc as serve_grpcio

            serve_grpc = serve_grpcio

        port = await tg.start(functools.partial(
            serve_grpc, server, host=options.host, port=options.grpc_port,
            max_message_size=options.grpc_max_message_size, keepalive=options.grpc_keepalive,
            shutdown_timeout=timeout, restricted=options.grpc_restricted, tls=options.grpc_tls,
            shared_memory=shared_memory, reuse_port=options.reuse_port,
            infer_compression_level=options.grpc_infer_response_compression_level, **grpc_args,
        ))
        grpc = format_address(options.host, port)
    if options.metrics_port is not None:
        from .metrics import serve_metrics

        metrics_host = options.metrics_address or options.host
        port = await tg.start(functools.partial(
            serve_metrics, server, host=metrics_host, port=options.metrics_port, cpu=options.allow_cpu_metrics,
            gpu=options.allow_gpu_metrics, interval_ms=options.metrics_interval_ms, reuse_port=options.reuse_port,
        ))
        metrics = format_address(metrics_host, port)
    return Addresses(http=http, grpc=grpc, metrics=metrics)


def format_address(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_async(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


__getattr__ = renamed(__name__, {"ServeOptions": FrontendOptions})
