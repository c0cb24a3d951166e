"""``serve_grpc_native``: the gRPC frontend on dagserve's own HTTP/2 server.

The same services, options and stop as :func:`~..grpc.serve_grpc` (grpc.aio), on an asyncio
server of :class:`~.connection.Connection` protocols; ``dagserve serve --grpc-server native``
chooses it. docs/architecture.md ("The native gRPC server") explains why it exists: grpcio's
C core and its poller thread cost more per call than dagserve's whole HTTP path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from ..._proto import grpc_service_pb2_grpc as pb_grpc
from ..._proto import health_pb2_grpc
from ...shared_memory import SharedMemoryRegistry
from ..accept import Balance, listen
from ..grpc import DEFAULT_MAX_MESSAGE_SIZE, HealthServicer, InferenceServicer
from ..grpc_compression import grpc_level
from ..http.server import bind
from ..limits import GrpcKeepalive
from ..restricted import Restrictions
from ..tls import TLSConfig
from .calls import Calls, PingPolicy, method_table
from .connection import Connection
from .relay import Relay

if TYPE_CHECKING:
    from ...engine import Server

__all__ = ["serve_grpc_native"]

log = logging.getLogger("dagserve.frontends.grpc")

_DEFAULT_KEEPALIVE_TIME_MS = 7_200_000
_DEFAULT_KEEPALIVE_TIMEOUT_MS = 20_000


async def serve_grpc_native(
    server: Server,
    *,
    host: str,
    port: int,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    restricted: Restrictions | None = None,
    tls: TLSConfig | None = None,
    keepalive: GrpcKeepalive | None = None,
    shutdown_timeout: float = 30,
    shared_memory: SharedMemoryRegistry | None = None,
    reuse_port: bool = False,
    balance: Balance | None = None,
    relay: Relay | None = None,
    infer_compression_level: str = "none",
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server`` over gRPC on ``host:port`` until cancelled, on dagserve's own HTTP/2
    server; the arguments and the contract are :func:`~..grpc.serve_grpc`'s.

    ``infer_compression_level`` compresses ModelInfer and ModelStreamInfer responses only, as
    Triton does, with zlib's effort following the level (:mod:`..grpc_compression`).

    Keepalive: ``max_connection_idle``, ``max_connection_age`` (GOAWAY, then the connection
    is closed ``max_connection_age_grace`` later if calls are still open) and
    ``keepalive_time`` / ``keepalive_timeout`` (a PING after that long without input; no ack
    in time closes the connection) are enforced, and so is gRPC's ping policing
    (``http2_min_recv_ping_interval_without_data``, ``http2_max_ping_strikes``,
    ``keepalive_permit_without_calls``: :class:`~.calls.PingPolicy`), with grpcio's defaults;
    ``http2_max_pings_without_data`` bounds the server's own pings, and this server sends one
    only after ``keepalive_time`` without input, so it needs no bound.

    On cancellation it stops accepting connections, sends every connection GOAWAY (the calls
    the client had sent are answered, later ones refused), ends health watches and idle
    inference streams, lets calls in flight finish for at most ``shutdown_timeout`` seconds,
    then cancels them, and returns once the sockets are closed. ``balance`` (a worker of
    ``--workers N``) places each connection on the worker that serves the fewest
    (:mod:`..accept`); ``relay`` (also a worker's) spreads the ``ModelInfer`` calls of its
    connections over the workers, and runs those the others relay here (:mod:`.relay`).

    Raises:
        OSError: the address could not be bound (e.g. the port is in use).
        ValueError: ``max_message_size`` is not within 1 .. 2**31-1, or
            ``infer_compression_level`` is not a level.
        ConfigError: a TLS file is unusable.
    """
    if not 0 < max_message_size <= DEFAULT_MAX_MESSAGE_SIZE:
        raise ValueError(f"max_message_size must be 1..{DEFAULT_MAX_MESSAGE_SIZE}, got {max_message_size}")
    grpc_level(infer_compression_level)
    ssl = None
    if tls is not None:  # security: TLS, ALPN h2 (gRPC clients insist on it)
        ssl = tls.ssl_context()
        ssl.set_alpn_protocols(["h2"])
    sock = bind(host, port, reuse_port=reuse_port)
    try:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            try:
                bound = await tg.start(
                    _serve, server, sock, stop, max_message_size, restricted, ssl, keepalive, shutdown_timeout,
                    shared_memory, balance, relay, infer_compression_level,
                )
                task_status.started(bound)
                await anyio.sleep_forever()
            finally:
                stop.set()  # _serve, shielded, stops gracefully
    finally:
        sock.close()


async def _serve(
    server: Server,
    sock: socket.socket,
    stop: anyio.Event,
    max_message_size: int,
    restricted: Restrictions | None,
    ssl: ssl_module.SSLContext | None,
    keepalive: GrpcKeepalive | None,
    shutdown_timeout: float,
    shared_memory: SharedMemoryRegistry | None,
    balance: Balance | None,
    relay: Relay | None,
    infer_compression_level: str,
    *,
    task_status: TaskStatus[int],
) -> None:
    stopping = anyio.Event()
    servicer = InferenceServicer(server, stopping, shared_memory)
    table = method_table(
        (pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer),
        (health_pb2_grpc.add_HealthServicer_to_server, HealthServicer(server, stopping)),
    )
    # Shielded: cancelling serve_grpc_native must become a graceful stop.
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            calls = Calls(table, tg, max_message_size=max_message_size, restricted=restricted,
                          ping_policy=_ping_policy(keepalive), infer_compression_level=infer_compression_level)
            if relay is not None:
                calls.relay = relay
                await tg.start(relay.serve, calls, table[b"/inference.GRPCInferenceService/ModelInfer"])
            stop_listening = await listen(sock, calls.protocol, ssl, tg, balance, "grpc", calls)
            if keepalive is not None and _enforced(keepalive):
                tg.start_soon(_sweep, calls, keepalive)
            bound = sock.getsockname()[1]
            log.info("gRPC (native) listening on %s:%d", sock.getsockname()[0], bound)
            log.debug("gRPC (native): max message %d bytes, TLS %s, restricted %s, keepalive %s",
                      max_message_size, "on" if ssl is not None else "off", "yes" if restricted else "no", keepalive)
            task_status.started(bound)
            try:
                await stop.wait()
            finally:
                stopping.set()  # health watches end; inference streams end once idle
                calls.stopping = True
                with anyio.move_on_after(shutdown_timeout) as expired:
                    await stop_listening()
                    for connection in list(calls.connections):
                        connection.begin_stop()
                    await calls.connections_gone()
                    if relay is not None:
                        await relay.drained()  # calls other workers relayed here (new ones are refused)
                if expired.cancelled_caught:
                    log.warning("gRPC: %d connections still busy after %gs: closing them",
                                len(calls.connections), shutdown_timeout)
                for connection in list(calls.connections):
                    connection.abort()
                tg.cancel_scope.cancel()  # the sweep, and calls past the timeout
        # As the HTTP server: closed transports close their sockets on a later loop turn; shielded,
        # since a stop is usually a cancellation, in which an unshielded wait ends at once.
        with anyio.CancelScope(shield=True):
            await calls.close_transports("gRPC")


def _ping_policy(keepalive: GrpcKeepalive | None) -> PingPolicy:
    """gRPC's ping policing with the flags given, grpcio's defaults for the others."""
    policy = PingPolicy()
    if keepalive is not None:
        if keepalive.http2_min_recv_ping_interval_without_data is not None:
            policy.min_interval = keepalive.http2_min_recv_ping_interval_without_data / 1000
        if keepalive.http2_max_ping_strikes is not None:
            policy.max_strikes = keepalive.http2_max_ping_strikes
        if keepalive.keepalive_permit_without_calls is not None:
            policy.permit_without_calls = bool(keepalive.keepalive_permit_without_calls)
    return policy


def _enforced(keepalive: GrpcKeepalive) -> bool:
    return any(value is not None for value in (
        keepalive.max_connection_idle, keepalive.max_connection_age, keepalive.keepalive_time,
    ))


async def _sweep(calls: Calls, keepalive: GrpcKeepalive) -> None:
    """Enforce the connection ages, idle time and keepalive pings, until cancelled."""
    idle = keepalive.max_connection_idle / 1000 if keepalive.max_connection_idle is not None else None
    age = keepalive.max_connection_age / 1000 if keepalive.max_connection_age is not None else None
    grace = (keepalive.max_connection_age_grace / 1000 if keepalive.max_connection_age_grace is not None
             else float("inf"))
    ping_after = (keepalive.keepalive_time if keepalive.keepalive_time is not None
                  else _DEFAULT_KEEPALIVE_TIME_MS) / 1000
    ping_timeout = (keepalive.keepalive_timeout if keepalive.keepalive_timeout is not None
                    else _DEFAULT_KEEPALIVE_TIMEOUT_MS) / 1000
    period = max(0.01, min(1.0, *(t / 4 for t in (idle, age, ping_after) if t is not None)))
    loop = asyncio.get_running_loop()
    aged_at: dict[Connection, float] = {}
    while True:
        await anyio.sleep(period)
        now = loop.time()
        for connection in list(calls.connections):
            if connection.closed:
                continue
            if age is not None:
                since = aged_at.get(connection)
                if since is None and now - connection.born >= age:
                    aged_at[connection] = now
                    connection.begin_stop()
                elif since is not None and now - since >= grace + 1.0:
                    connection.abort()  # calls still open past the grace (after the GOAWAY's second)
                    continue
            if idle is not None and not connection.streams and now - connection.idle_since >= idle:
                connection.begin_stop()
            if connection.ping_sent_at is not None:
                if now - connection.ping_sent_at > ping_timeout:
                    log.info("gRPC: closing a connection whose client did not answer a keepalive PING")
                    connection.abort()
            elif now - connection.last_read >= ping_after:
                connection.keepalive_ping()
        for gone in [c for c in aged_at if c not in calls.connections]:
            del aged_at[gone]
