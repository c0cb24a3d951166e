"""Accepting connections ourselves, so that each can be placed on the least-loaded worker.

``loop.create_server`` accepts and serves every connection in this process. With
``dagserve serve --workers N`` the kernel picks the worker of a connection by a hash of its
addresses, so a few connections (a gRPC client multiplexes many calls over one) spread
unevenly. An :class:`Acceptor` accepts on the listening socket itself and asks its
:class:`Balance` (``dagserve.balance.ConnectionBalance`` in a worker) where each connection
goes: here (``loop.connect_accepted_socket``, the same transport ``create_server`` makes, TLS
included) or, before anything is read from it, to another worker, which adopts it as if it
had accepted it. Only per connection: nothing of a request passes through here.

Without a balance (one process, the embedded server, ``--worker-balance false``) the servers
keep ``loop.create_server``: :func:`listen` starts either. Both servers count their connections
and transports in a :class:`Tracker`, for the balance and for their graceful stop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

__all__ = ["Acceptor", "Balance", "Tracker", "listen"]

log = logging.getLogger("dagserve.frontends")

_BACKLOG = 2048
"""Accepts per readiness callback at most (asyncio's ``create_server(backlog=2048)`` does the
same); the listening socket's queue is ``bind``'s ``listen(2048)``."""

_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_RETRY_SECS = 1.0  # asyncio's pause after running out of descriptors

_C = TypeVar("_C")


class Balance(Protocol):
    """Where a connection accepted on a port is served (one object per worker, shared by its
    frontends; ``port`` names the frontend: ``"http"``, ``"grpc"``)."""

    def target(self, port: str) -> int | None:
        """The worker to hand a connection just accepted here to, or None to serve it here.
        A worker returned counts as holding the connection until :meth:`hand_off` for it
        returns, which the caller must call."""

    def opened(self, port: str) -> None:
        """A connection of ``port`` is served here from now on (accepted or adopted)."""

    def closed(self, port: str) -> None:
        """A connection :meth:`opened` is gone."""

    async def hand_off(self, target: int, port: str, sock: socket.socket) -> bool:
        """Pass ``sock`` to worker ``target``; True once it has taken it (the caller then
        closes its copy), False if it cannot (gone, stopping): the caller serves it. Never
        raises but on cancellation."""

    def take(self, port: str, adopt: Callable[[socket.socket], None] | None) -> None:
        """Have connections of ``port`` that other workers hand here passed to ``adopt``
        (None: refuse them from now on, e.g. while stopping)."""


class Acceptor:
    """Accepts connections on ``sock`` (listening, non-blocking) and serves each with
    ``factory`` (and ``ssl``) here or hands it to another worker as ``balance`` says; the
    tasks of connections being set up or handed off live in ``tg``.

    Counting: :meth:`Balance.opened` when a connection is accepted to stay or adopted, and
    :meth:`Balance.closed` when setting it up fails; the server's :class:`Tracker` calls
    ``closed`` when its transport is lost (:func:`listen` sets its ``on_transport_lost``)."""

    def __init__(
        self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], ssl: ssl_module.SSLContext | None,
        tg: TaskGroup, balance: Balance, port: str,
    ) -> None:
        self._sock = sock
        self._factory = factory
        self._ssl = ssl
        self._tg = tg
        self._balance = balance
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._handing = 0  # handoffs not yet answered
        self._handed: anyio.Event | None = None

    def start(self) -> None:
        """Accept from now on, and take connections handed here."""
        self._resume()
        self._balance.take(self._port, self.adopt)

    async def stop(self) -> None:
        """Accept no more, refuse handed connections, and wait until every handoff in flight
        is answered (one that was refused is served here, like one accepted just before)."""
        self._balance.take(self._port, None)
        if self._retry is not None:
            self._retry.cancel()
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        while self._handing:
            self._handed = anyio.Event()
            await self._handed.wait()

    def adopt(self, sock: socket.socket) -> None:
        """Serve ``sock`` (connected, nothing read from it) here."""
        self._balance.opened(self._port)
        self._tg.start_soon(self._connect, sock)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._reading = True

    def _accept(self) -> None:
        balance, port = self._balance, self._port
        for _ in range(_BACKLOG):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:  # as asyncio: pause, the queue waits meanwhile
                    log.error("%s: cannot accept a connection (%s): pausing for %gs", port, exc, _RETRY_SECS)
                    self._loop.remove_reader(self._sock.fileno())
                    self._reading = False
                    self._retry = self._loop.call_later(_RETRY_SECS, self._resume)
                else:
                    log.error("%s: cannot accept a connection: %s", port, exc)
                return
            conn.setblocking(False)
            target = balance.target(port)
            if target is None:
                self.adopt(conn)
            else:
                self._handing += 1
                self._tg.start_soon(self._hand_off, conn, target)

    async def _hand_off(self, conn: socket.socket, target: int) -> None:
        try:
            taken = await self._balance.hand_off(target, self._port, conn)
        except BaseException:
            conn.close()  # cancelled: the server stops at once
            raise
        finally:
            self._handing -= 1
            if self._handed is not None and not self._handing:
                self._handed.set()
        if taken:
            conn.close()  # the other worker has its own descriptor
        else:
            self.adopt(conn)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except OSError as exc:  # a failed TLS handshake (SSLError), its timeout, a client gone already
            log.debug("%s: a connection ended before it was set up: %r", self._port, exc)
            self._balance.closed(self._port)
            if conn.fileno() != -1:
                conn.close()


class Tracker(Generic[_C]):
    """The open connections and transports of one server. A connection counts from when the
    server adds it to :attr:`connections` (refused ones never are) until :meth:`lost`, so a
    response still being flushed counts; a transport counts from when the server adds it to
    :attr:`open_transports` in ``connection_made``, refused ones included, until it is lost:
    the server returns only once their sockets are closed (a close is finished by a later loop
    turn)."""

    __slots__ = ("_emptied", "_transports_gone", "connections", "on_transport_lost", "open_transports")

    def __init__(self) -> None:
        self.connections: set[_C] = set()
        self.open_transports: set[asyncio.Transport] = set()
        self.on_transport_lost: Callable[[], None] | None = None  # counts connections for a Balance
        self._emptied: anyio.Event | None = None
        self._transports_gone: anyio.Event | None = None

    def lost(self, connection: _C, transport: asyncio.Transport) -> None:
        """``connection``'s transport is lost (its protocol's ``connection_lost``)."""
        self.connections.discard(connection)
        if self._emptied is not None and not self.connections:
            self._emptied.set()
        self.open_transports.discard(transport)
        if self.on_transport_lost is not None:
            self.on_transport_lost()
        if self._transports_gone is not None and not self.open_transports:
            self._transports_gone.set()

    async def connections_gone(self) -> None:
        """Until no connection is open."""
        while self.connections:
            self._emptied = anyio.Event()
            await self._emptied.wait()

    async def close_transports(self, name: str) -> None:
        """Wait until every transport made so far is lost, for at most 5 s, then abort those
        left (still flushing to a client that does not read), and let their sockets close.
        ``name`` names the server in the log.

        Bounded: a transport the loop never finishes must not hang the stop. Connections
        accepted just before the listener closed get their transport (and ``connection_made``)
        a few loop turns later: those turns run first, so that they are counted."""
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(5.0):
            while self.open_transports:
                self._transports_gone = anyio.Event()
                await self._transports_gone.wait()
        if self.open_transports:
            log.warning("%s: %d connections not closed 5s after the stop: aborting them",
                        name, len(self.open_transports))
            for transport in list(self.open_transports):
                transport.abort()
            for _ in range(3):  # the aborts close their sockets on the next turn
                await anyio.lowlevel.checkpoint()


async def listen(
    sock: socket.socket, factory: Callable[[], asyncio.Protocol], ssl: ssl_module.SSLContext | None,
    tg: TaskGroup, balance: Balance | None, port: str, tracker: Tracker[Any],
) -> Callable[[], Awaitable[None]]:
    """Serve connections on ``sock`` with ``factory`` (and ``ssl``): by ``loop.create_server``,
    or with a ``balance`` by an :class:`Acceptor` whose tasks live in ``tg`` and which counts a
    connection gone when ``tracker`` loses its transport.

    Returns the stop: accept no more (handoffs in flight come back here if refused: they are
    served) and close ``sock``."""
    if balance is None:
        server = await asyncio.get_running_loop().create_server(factory, sock=sock, backlog=_BACKLOG, ssl=ssl)

        async def stop() -> None:
            server.close()  # new connections are refused from here on
            sock.close()
    else:
        acceptor = Acceptor(sock, factory, ssl, tg, balance, port)
        tracker.on_transport_lost = lambda: balance.closed(port)
        acceptor.start()

        async def stop() -> None:
            await acceptor.stop()
            sock.close()
    return stop
