"""Even connection placement over the workers of ``dagserve serve --workers N``.

The kernel gives a connection to a worker by a hash of its addresses (``SO_REUSEPORT``), so
a few connections spread unevenly: three gRPC channels land 2:1 or 3:0 on two workers, and a
channel carries every call of its client. Here each worker counts the connections it serves
per frontend (``http``, ``grpc``) in its own slots of a small file all workers map
(``connections`` in the workers' private directory). A worker that accepts a connection
while it serves more of that frontend's connections than another worker does passes the
socket, before reading anything from it, to the one that serves the fewest: the descriptor
crosses a Unix socket of that worker's (``worker-{i}.handoff.sock``) by ``SCM_RIGHTS``, and
the receiver adopts it as if it had accepted it (a TLS handshake happens there).

The rule, *hand off when mine > min*, keeps max - min <= 1 over the workers, the most even
placement there is: 4 connections on 2 workers are 2:2 whatever the kernel's hash. A looser
rule (mine > min + 1) would leave 3:1, the very imbalance this is for, and a handoff costs
one Unix round trip per connection, nothing per request. A handed connection is never handed
on (nothing bounces). A worker that is stopping, or whose frontend is not serving yet, refuses
(its slot reads 0 = "not taking"); one that cannot be reached (dead, being restarted) is as
good as refusing: the sender serves the connection itself, so no connection is dropped.

Counts are of connections, not of their load: an idle keep-alive connection counts as much as
a gRPC channel carrying 16 calls.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
from collections.abc import Callable, MutableSequence
from pathlib import Path
from typing import cast

import anyio
import anyio.abc

__all__ = ["PORTS", "ConnectionBalance", "shared_counts"]

log = logging.getLogger("dagserve.workers")

PORTS = ("http", "grpc")
"""The frontends whose connections are placed (the metrics port's scrapes are left alone)."""
_TAKEN, _REFUSED = b"T", b"R"


class ConnectionBalance:
    """Worker ``index`` of ``count``'s side of the placement (:class:`~.frontends.accept.Balance`):
    its counts, the others' (read from the shared file in ``directory``), and its handoff
    socket (:meth:`serve`, to run while the worker runs)."""

    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.index = index
        self.count = count
        self._directory = directory
        self._slots = len(PORTS)
        # One 8-byte slot per worker and port, each written by its worker only: the number of
        # connections it serves + 1, or 0 while it takes none (not started, stopping).
        self._shared = shared_counts(directory / "connections", count * self._slots)
        self._held = dict.fromkeys(PORTS, 0)
        self._adopters: dict[str, Callable[[socket.socket], None]] = {}
        # Per worker and port: handoffs not yet answered, and the count the receiver will have
        # once it has taken them (its slot may show them already, or not yet).
        self._pending = [dict.fromkeys(PORTS, 0) for _ in range(count)]
        self._floor = [dict.fromkeys(PORTS, 0) for _ in range(count)]
        for port in PORTS:
            self._publish(port)  # a restarted worker: its predecessor's connections are gone

    def statistics(self) -> dict[str, list[int]]:
        """Per port, every worker's connections as the shared file says (-1: taking none)."""
        return {port: [self._shared[w * self._slots + s] - 1 for w in range(self.count)]
                for s, port in enumerate(PORTS)}

    def handoff_path(self, index: int) -> Path:
        return self._directory / f"worker-{index}.handoff.sock"

    # -- the frontends' side (frontends.accept.Balance) --------------------------------------
    def target(self, port: str) -> int | None:
        slot = PORTS.index(port)
        if port not in self._adopters:
            return None  # this frontend is stopping: its connections stay
        best, fewest = None, self._held[port]
        for step in range(1, self.count):  # from the next worker on, so that ties spread
            worker = (self.index + step) % self.count
            value = self._shared[worker * self._slots + slot]
            if value == 0:
                continue  # not taking connections
            held = value - 1
            if self._pending[worker][port]:
                held = max(held, self._floor[worker][port])
            if held < fewest:
                best, fewest = worker, held
        if best is not None:
            # Until hand_off's answer, the target counts as holding this connection too: the
            # next accept must see it whether or not the target's slot shows it yet (adding
            # the pending handoffs to the slot would count it twice once it does).
            self._floor[best][port] = fewest + 1
            self._pending[best][port] += 1
        return best

    def opened(self, port: str) -> None:
        self._held[port] += 1
        self._publish(port)

    def closed(self, port: str) -> None:
        self._held[port] -= 1
        self._publish(port)

    async def hand_off(self, target: int, port: str, sock: socket.socket) -> bool:
        try:
            async with await anyio.connect_unix(self.handoff_path(target)) as stream:
                await stream.send_fds(port.encode(), [sock.fileno()])
                answer = await stream.receive(1)
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            log.debug("worker %d cannot take a connection (%r): serving it here", target, exc)
            return False
        finally:
            self._pending[target][port] -= 1
        log.debug("%s: a connection handed to worker %d: %s", port, target, "taken" if answer == _TAKEN else "refused")
        return answer == _TAKEN

    def take(self, port: str, adopt: Callable[[socket.socket], None] | None) -> None:
        if adopt is None:
            self._adopters.pop(port, None)
        else:
            self._adopters[port] = adopt
        self._publish(port)

    # -- the receiving side ------------------------------------------------------------------
    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take the connections other workers hand here, until cancelled."""
        path = self.handoff_path(self.index)
        path.unlink(missing_ok=True)  # left by this worker's previous run
        listener = await anyio.create_unix_listener(path)
        async with listener:
            task_status.started()
            await listener.serve(self._receive)

    async def _receive(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            assert isinstance(stream, anyio.abc.UNIXSocketStream)
            try:
                message, fds = await stream.receive_fds(16, 1)
            except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                return
            adopt = self._adopters.get(message.decode(errors="replace"))
            if adopt is None or not fds:
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    await stream.send(_REFUSED)  # the sender keeps it
                return
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            adopt(sock)  # counted here before the sender hears of it: its next choice sees it
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await stream.send(_TAKEN)

    def _publish(self, port: str) -> None:
        slot = self.index * self._slots + PORTS.index(port)
        self._shared[slot] = self._held[port] + 1 if port in self._adopters else 0


def shared_counts(path: Path, count: int) -> MutableSequence[int]:
    """``count`` integers in a file every worker maps (the first to come creates it; a
    worker writes only its own ones, which readers see whole: aligned 8-byte words)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < 8 * count:
            os.ftruncate(fd, 8 * count)
        memory = mmap.mmap(fd, 8 * count)
    finally:
        os.close(fd)
    return cast("MutableSequence[int]", memoryview(memory).cast("q"))
