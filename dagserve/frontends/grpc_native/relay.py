"""Calls of one gRPC connection spread over the workers (``dagserve serve --workers N``).

A gRPC client multiplexes its calls over few connections (perf_analyzer: 3 at c16, about 14
at c64), and a connection stays with the worker that accepted it, so at c16 three workers of
16 did all the work (gRPC c16 at 0.56 of HTTP's throughput on the H200's 16 cores). Here a
worker that runs more ``ModelInfer`` calls than another hands the next one, as it came off
the wire, to the least busy worker: the request message (decompressed, not decoded), the
time left of its deadline and its metadata cross a Unix socket of that worker's
(``worker-{i}.relay.sock``), which runs the call through its own :class:`~.calls.Calls` as if
its client had sent it there, and the answer comes back as the HPACK blocks and DATA that
call produced (literal fields without indexing, which mean the same on any connection), to
be written to the client's stream unchanged. The worker that holds the connection parses and
writes HTTP/2; decoding, running and encoding the request happen where it runs.

Each worker counts the ``ModelInfer`` calls it runs (its own and relayed ones) in its slot of
a small file all workers map (``relay`` in the private directory). The rule (:meth:`Relay.peer`):
hand a call on when this worker runs one already and another runs none (counting the calls
this one has sent there and not seen answered). A relayed call is never
relayed again; calls that name a shared-memory region stay where they arrived (regions are
registered per worker). A worker that is stopping refuses relayed calls unrun, and the sender
runs them itself; one that cannot be reached does the same. A worker that closes the
connection while it runs a call (it died) fails that call UNAVAILABLE: it may have run.

Wire format, both ways: a 4-byte big-endian length, then the body. A call: ``>d`` seconds
left (negative: no deadline), ``>I`` the metadata's length, the metadata (for each field a
``>HI`` of name and value lengths, then both), and the request message. An answer: one byte
(:data:`REFUSED`, :data:`WHOLE`: ``>II`` lengths of the head and DATA blocks, then head,
DATA, trailers; :data:`TRAILERS`: the trailers block).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Iterator, MutableSequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .connection import Stream

if TYPE_CHECKING:
    from .calls import Calls, Method

__all__ = ["Relay", "RelayLostError"]

log = logging.getLogger("dagserve.frontends.grpc")

REFUSED, WHOLE, TRAILERS = 0, 1, 2
_LENGTH = struct.Struct(">I")
_CALL = struct.Struct(">dI")
_FIELD = struct.Struct(">HI")
_WHOLE = struct.Struct(">BII")
_SHARED_MEMORY = b"shared_memory_region"
"""A request parameter that names a region registered with this worker: such calls stay."""


class RelayLostError(Exception):
    """The worker running a relayed call closed the connection before answering it."""


class Relay:
    """Worker ``index`` of ``count``'s side of the relay: its load counts (``loads``, shared
    by every worker), the connections to the others, and the socket at ``path(index)``
    where it takes the others' calls (:meth:`serve`)."""

    def __init__(self, directory: Path, index: int, count: int, loads: MutableSequence[int]) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self._loads = loads
        loads[index] = 0  # a restarted worker's slot held its predecessor's count
        self._sent = [0] * count  # calls handed to each worker, not yet answered
        self._idle: list[list[_Client]] = [[] for _ in range(count)]
        self.method: Method | None = None  # ModelInfer, set by serve()
        self.calls: Calls | None = None
        self._taken = 0  # calls relayed here, not yet answered
        self._drained: anyio.Event | None = None

    def path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.relay.sock"

    # -- choosing -------------------------------------------------------------------------
    def peer(self, message: bytes) -> int | None:
        """The worker to hand a call with request ``message`` to, or None to run it here.

        Only to a worker running no call, and only when this one runs one already. Evening
        out busy workers cost more than it gained: on 16 cores at c64 (perf_analyzer's ~14
        connections carrying 4-6 calls each) relaying to any less busy worker gave 17,946
        req/s against 19,304 without the relay, and with two cores busy and three
        connections placed 2:1 it gave 2,992 req/s against 4,175.
        """
        loads, sent = self._loads, self._sent
        if not loads[self.index] or _SHARED_MEMORY in message:
            return None
        for step in range(1, self.count):  # from the next worker on, so that calls spread
            index = (self.index + step) % self.count
            if not loads[index] and not sent[index]:  # its own count lags behind what we sent
                return index
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count a call this worker runs."""
        self._loads[self.index] += 1
        try:
            yield
        finally:
            self._loads[self.index] -= 1

    # -- the sending side -----------------------------------------------------------------
    async def call(self, peer: int, stream: Stream) -> tuple[int, bytes, bytes, bytes] | None:
        """Run ``stream``'s call on worker ``peer``: its answer as ``(kind, head, data,
        trailers)``, or None if it was refused unrun (stopping, unreachable). Cancelled, it
        closes the connection, which cancels the call there."""
        client = None
        idle = self._idle[peer]
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                client = candidate
                break
        self._sent[peer] += 1  # before any wait: a call chosen meanwhile sees this one
        try:
            if client is None:
                try:
                    _, client = await asyncio.get_running_loop().create_unix_connection(_Client, str(self.path(peer)))
                except OSError:
                    return None  # not running (restarting) or not started: run it here
            try:
                answer = await client.call(_encode_call(stream))
            except BaseException:
                client.close()
                raise
        finally:
            self._sent[peer] -= 1
        self._idle[peer].append(client)
        return answer

    # -- the receiving side ---------------------------------------------------------------
    async def drained(self) -> None:
        """Until every call relayed here has been answered (in a stop: new ones are refused)."""
        while self._taken:
            self._drained = anyio.Event()
            await self._drained.wait()

    def took(self, change: int) -> None:
        self._taken += change
        if not self._taken and self._drained is not None:
            self._drained.set()

    async def serve(self, calls: Calls, method: Method, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Take the other workers' calls on this worker's relay socket until cancelled."""
        self.calls, self.method = calls, method
        path = self.path(self.index)
        path.unlink(missing_ok=True)  # a restarted worker's predecessor's
        server = await asyncio.get_running_loop().create_unix_server(lambda: _Served(self), str(path))
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            server.close()
            path.unlink(missing_ok=True)


def _encode_call(stream: Stream) -> bytes:
    left = -1.0 if stream.deadline == float("inf") else max(0.0, stream.deadline - anyio.current_time())
    fields = b"".join(
        _FIELD.pack(len(name), len(value)) + name + value
        for name, value in stream.headers if name[:1] != b":"
    )
    message = stream.message or b""
    body = _CALL.pack(left, len(fields)) + fields + message
    return _LENGTH.pack(len(body)) + body


def _decode_call(body: bytes) -> tuple[float, list[tuple[bytes, bytes]], bytes]:
    left, size = _CALL.unpack_from(body)
    position, end = _CALL.size, _CALL.size + size
    fields = []
    while position < end:
        name_size, value_size = _FIELD.unpack_from(body, position)
        position += _FIELD.size
        name = body[position:position + name_size]
        position += name_size
        fields.append((name, body[position:position + value_size]))
        position += value_size
    return left, fields, body[end:]


class _Framed(asyncio.Protocol):
    """Length-prefixed frames in, :meth:`frame` called with each body."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            size = _LENGTH.unpack_from(buffer)[0]
            if len(buffer) < 4 + size:
                return
            body = bytes(buffer[4:4 + size])
            del buffer[:4 + size]
            self.frame(body)

    def frame(self, body: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class _Client(_Framed):
    """A sending worker's connection to another worker's relay socket: one call at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._answer: asyncio.Future[tuple[int, bytes, bytes, bytes] | None] | None = None

    async def call(self, frame: bytes) -> tuple[int, bytes, bytes, bytes] | None:
        assert self.transport is not None
        self._answer = answer = asyncio.get_running_loop().create_future()
        self.transport.write(frame)
        return await answer

    def frame(self, body: bytes) -> None:
        kind = body[0]
        if kind == WHOLE:
            _, head_size, data_size = _WHOLE.unpack_from(body)
            start = _WHOLE.size
            head = body[start:start + head_size]
            data = body[start + head_size:start + head_size + data_size]
            outcome: tuple[int, bytes, bytes, bytes] | None = (WHOLE, head, data, body[start + head_size + data_size:])
        elif kind == TRAILERS:
            outcome = (TRAILERS, b"", b"", body[1:])
        else:
            outcome = None
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(RelayLostError("the worker running it closed the connection"))


class _Served(_Framed):
    """A connection from another worker, taking its calls one at a time; it stands for the
    client's connection to :class:`~.calls.Calls` (``respond``, ``send_trailers``)."""

    relayed = True

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self._relay = relay
        self._stream: Stream | None = None

    def frame(self, body: bytes) -> None:
        relay, transport = self._relay, self.transport
        calls, method = relay.calls, relay.method
        assert calls is not None and method is not None and transport is not None
        if calls.stopping:
            transport.write(_LENGTH.pack(1) + bytes((REFUSED,)))
            return
        left, fields, message = _decode_call(body)
        stream = Stream(0, 0)
        stream.headers = fields
        stream.method = method
        stream.message = message
        stream.remote_ended = True
        if left >= 0:
            stream.deadline = anyio.current_time() + left
        self._stream = stream
        relay.took(1)
        calls.start(self, stream)  # type: ignore[arg-type]  # it answers as a Connection does

    def respond(self, stream: Stream, head: bytes, data: bytes, trailers: bytes) -> None:
        body = _WHOLE.pack(WHOLE, len(head), len(data)) + head + data + trailers
        self._answer(stream, _LENGTH.pack(len(body)) + body)

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        self._answer(stream, _LENGTH.pack(1 + len(block)) + bytes((TRAILERS,)) + block)

    def _answer(self, stream: Stream, frame: bytes) -> None:
        if stream.local_ended or self.closed or self.transport is None:
            return
        stream.local_ended = True
        self._stream = None
        self._relay.took(-1)
        self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        stream, self._stream = self._stream, None
        if stream is not None:  # the sender gave up on it (its client left): cancel it here
            self._relay.took(-1)
            stream.reset = True
            if stream.scope is not None:
                stream.scope.cancel()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def extra(self, name: str) -> Any:
        return None
