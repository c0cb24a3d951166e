"""The gRPC layer of the native server: streams become calls of the servicers' methods.

gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md): a call is one stream; its request
HEADERS name the method (``:path``), its DATA carries 5-byte length-prefixed messages
(flag: compressed with the ``grpc-encoding``), and the answer is response HEADERS, DATA,
and trailers with ``grpc-status`` / ``grpc-message`` (or a trailers-only response for an
error before any message).

The servicers (:class:`~..grpc.InferenceServicer`, :class:`~..grpc.HealthServicer`) are the
grpc.aio ones, unchanged: the method table comes from their generated ``add_*_to_server``
functions, and each call gets a :class:`Context`, the part of ``grpc.aio.ServicerContext``
they use. A unary call starts once its request has arrived whole; a streaming one at its
headers. Each call runs in a worker task of the server's task group (:meth:`Calls._worker`), in
a cancel scope of its own, cancelled when the client resets the stream or leaves, and carrying
the ``grpc-timeout`` deadline.

With ``--grpc-infer-response-compression-level``, the inference methods' responses are
compressed as gRPC's core compresses them on Triton (:mod:`..grpc_compression`); a method
knows its level (:attr:`Method.compression`), so every other call pays one attribute check.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
from anyio.abc import TaskGroup
from google.protobuf.message import DecodeError

from ..accept import Tracker
from ..grpc_compression import (
    COMPRESSED_METHODS,
    ZLIB_LEVELS,
    compressed_message,
    grpc_level,
    response_encoding,
)
from ..restricted import Restrictions, grpc_denied
from .connection import Connection, Stream
from .hpack import encode_literal
from .relay import TRAILERS, Relay, RelayLostError

if TYPE_CHECKING:
    import grpc

__all__ = ["Calls", "Context", "Method", "PingPolicy", "method_table"]

log = logging.getLogger("dagserve.frontends.grpc")

# gRPC status codes (grpc.StatusCode values), by the names this module uses.
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, PERMISSION_DENIED = 0, 1, 2, 4, 7
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 8, 12, 13, 14

RESPONSE_HEAD = b"\x88" + encode_literal(b"content-type", b"application/grpc")
""":status 200 (static index 8) and content-type: the response HEADERS of every call."""
OK_TRAILERS = encode_literal(b"grpc-status", b"0")
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_RESERVED = frozenset((b"te", b"content-type", b"user-agent"))
MAX_IDLE_WORKERS = 128
"""Call-running tasks kept waiting for calls (more calls at once start more tasks)."""
_ENCODINGS = {b"": 0, b"identity": 0, b"gzip": 31, b"deflate": 15}
"""``grpc-encoding`` -> zlib's ``wbits`` (0: not compressed)."""
_ENCODED_HEADS = {name: RESPONSE_HEAD + encode_literal(b"grpc-encoding", name) for name in (b"gzip", b"deflate")}
"""The response HEADERS of a call whose messages are compressed, by algorithm."""
COMPRESS_ON_LOOP_MAX = 32 * 1024
"""Largest response compressed on the event loop; a larger one is compressed in a worker
thread. zlib takes ~10 ms for 256 KiB of random float32 (measured, any level), so a large
tensor would stall every other call for that long."""


class Method:
    """One RPC: its handler, (de)serializers and kind, from a ``grpc.RpcMethodHandler``."""

    __slots__ = ("compression", "deserialize", "handler", "name", "request_streaming", "response_streaming", "serialize")

    def __init__(self, name: str, handler: Any) -> None:
        self.name = name
        self.compression = ""
        """Its responses' compression level (``low`` .. ``high``); empty: none."""
        self.request_streaming = bool(handler.request_streaming)
        self.response_streaming = bool(handler.response_streaming)
        self.deserialize: Callable[[bytes], Any] = handler.request_deserializer
        self.serialize: Callable[[Any], bytes] = handler.response_serializer
        self.handler: Callable[..., Any] = (
            handler.stream_stream if self.request_streaming and self.response_streaming
            else handler.stream_unary if self.request_streaming
            else handler.unary_stream if self.response_streaming
            else handler.unary_unary
        )


def method_table(*registrations: tuple[Callable[[Any, Any], None], Any]) -> dict[bytes, Method]:
    """``{b"/package.Service/Method": Method}`` for each ``(add_X_to_server, servicer)``: the
    generated function registers its handlers with a stand-in for a grpc server."""
    table: dict[bytes, Method] = {}

    class _Collector:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
            for name, handler in handlers.items():
                table[f"/{service}/{name}".encode()] = Method(name, handler)

    for add, servicer in registrations:
        add(servicer, _Collector())
    return table


def status_block(code: int, message: str = "", *, trailers_only: bool = False) -> bytes:
    """The trailers of a call ending with ``code``; with ``trailers_only`` the response
    HEADERS too (an answer with no message)."""
    block = (RESPONSE_HEAD if trailers_only else b"") + encode_literal(b"grpc-status", b"%d" % code)
    if message:
        block += encode_literal(b"grpc-message", percent_encode(message))
    return block


def percent_encode(message: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, bytes outside 0x20-0x7E and ``%`` as ``%XX``."""
    data = message.encode("utf-8", errors="replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in data):
        return data
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in data)


def accept_encoding(stream: Stream) -> bytes:
    """The client's ``grpc-accept-encoding`` on ``stream`` (repeated fields joined), ``b""``
    if none."""
    return b",".join(value for name, value in stream.headers if name == b"grpc-accept-encoding")


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (1-8 digits and a unit), ``None`` if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1]) if value else None
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class _Abort(Exception):
    """Raised by :meth:`Context.abort`: the call ends with this status."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """What the servicers use of ``grpc.aio.ServicerContext``, for one call."""

    __slots__ = ("_calls", "_connection", "_method", "_stream", "code", "details")

    def __init__(self, calls: Calls, connection: Connection, stream: Stream, method: Method) -> None:
        self._calls = calls
        self._connection = connection
        self._stream = stream
        self._method = method
        self.code: Any = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The client's custom metadata (``-bin`` values decoded to bytes) and user-agent."""
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in self._stream.headers:
            if name[:1] == b":" or (name in _RESERVED and name != b"user-agent") or name.startswith(b"grpc-"):
                continue
            key = name.decode("latin-1")
            if key.endswith("-bin"):
                metadata.append((key, base64.b64decode(value + b"==")))
            else:
                metadata.append((key, value.decode("latin-1")))
        return tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        """End the call with ``code`` and ``details``: raises, as grpc.aio's does."""
        raise _Abort(code.value[0], details)

    async def write(self, message: Any) -> None:
        """Send one response message of a server-streaming call; waits while the client's
        windows (or the socket) hold back what was written before."""
        stream, connection = self._stream, self._connection
        payload = self._method.serialize(message)
        limit = self._calls.max_message_size
        if len(payload) > limit:
            raise _Abort(RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(payload)} vs. {limit})")
        if self._method.compression:
            head, data = await self._calls.compress(stream, self._method.compression, payload)
            connection.send_headers(stream, head)
            connection.send_data(stream, data)
        else:
            connection.send_headers(stream, RESPONSE_HEAD)
            connection.send_data(stream, b"\0" + len(payload).to_bytes(4, "big") + payload)
        if stream.outbox or connection.write_paused:
            await connection.writable(stream)

    def time_remaining(self) -> float | None:
        deadline = self._stream.deadline
        return None if deadline == float("inf") else max(0.0, deadline - anyio.current_time())

    def cancelled(self) -> bool:
        return self._stream.reset

    def done(self) -> bool:
        return self._stream.local_ended

    def peer(self) -> str:
        address = self._connection.extra("peername")
        if isinstance(address, tuple) and len(address) >= 2:
            return f"ipv{6 if ':' in str(address[0]) else 4}:{address[0]}:{address[1]}"
        return "unknown"

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def send_initial_metadata(self, metadata: Any) -> None:
        head = RESPONSE_HEAD
        if self._method.compression:  # the HEADERS name the encoding of the messages to come
            encoding = response_encoding(self._method.compression, accept_encoding(self._stream))
            head = _ENCODED_HEADS[encoding[0]] if encoding is not None else RESPONSE_HEAD
        self._connection.send_headers(self._stream, head)

    async def requests(self) -> AsyncIterator[Any]:
        """A streaming call's request messages, as they arrive; ends at the client's
        END_STREAM. Each message taken gives its bytes back to the client's window."""
        stream, connection = self._stream, self._connection
        inbox = stream.inbox
        assert inbox is not None
        deserialize = self._method.deserialize
        while True:
            if inbox:
                message, wire = inbox.popleft()
                connection.credit(stream, wire)
                try:
                    request = deserialize(message)
                except DecodeError:
                    raise _Abort(INTERNAL, "Exception deserializing request!") from None
                yield request
            elif stream.remote_ended or stream.reset:
                return
            else:
                await stream.wait()


class PingPolicy:
    """When a client's PINGs are too many (gRPC's ping policing, grpcio's defaults): a PING
    sooner than ``min_interval`` seconds after the previous one, with no HEADERS or DATA
    sent in between, is a strike (sooner than 2 h when no call is open, unless
    ``permit_without_calls``); more than ``max_strikes`` (0: no limit) end the connection with
    GOAWAY ENHANCE_YOUR_CALM, "too_many_pings"."""

    __slots__ = ("max_strikes", "min_interval", "permit_without_calls")

    def __init__(self, *, min_interval: float = 300.0, max_strikes: int = 2, permit_without_calls: bool = False) -> None:
        self.min_interval = min_interval
        self.max_strikes = max_strikes
        self.permit_without_calls = permit_without_calls


class Calls(Tracker[Connection]):
    """The server's calls: the method table, the task group the handlers run in, the limits,
    and the open connections and transports (a :class:`~..accept.Tracker`: for keepalive and
    the graceful stop).

    ``infer_compression_level`` (:data:`~..grpc_compression.COMPRESSION_LEVELS`) compresses the
    responses of the table's inference methods (:data:`~..grpc_compression.COMPRESSED_METHODS`).

    Raises:
        ValueError: ``infer_compression_level`` is not a level.
    """

    def __init__(
        self, table: dict[bytes, Method], tg: TaskGroup, *, max_message_size: int,
        restricted: Restrictions | None = None, ping_policy: PingPolicy | None = None,
        infer_compression_level: str = "none",
    ) -> None:
        super().__init__()
        if grpc_level(infer_compression_level):
            for method in table.values():
                if method.name in COMPRESSED_METHODS:
                    method.compression = infer_compression_level
        self.table = table
        self.ping_policy = ping_policy or PingPolicy()
        self.max_message_size = max_message_size
        self.restricted = restricted if restricted else None
        self.stopping = False
        self._tg = tg
        self._idle: list[asyncio.Future[tuple[Connection, Stream]]] = []  # idle workers, waiting for a call
        self.relay: Relay | None = None  # spreads ModelInfer calls over the workers (:mod:`.relay`)

    def protocol(self) -> Connection:
        """The protocol factory for ``loop.create_server``."""
        return Connection(self)

    # ------------------------------------------------------------- from the connection

    def request_headers(self, connection: Connection, stream: Stream) -> None:
        """A new stream's headers: find its method and check them; refuse it, or start a
        streaming call now (a unary one starts at :meth:`request_end`)."""
        path = method_name = content_type = timeout = b""
        for name, value in stream.headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method_name = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                stream.encoding = value
            elif name == b"grpc-timeout":
                timeout = value
        if method_name != b"POST":
            self._refuse(connection, stream, INTERNAL, f"HTTP method {method_name.decode('latin-1')} is not POST")
            return
        if not content_type.startswith(b"application/grpc"):
            connection.send_trailers(stream, encode_literal(b":status", b"415") + status_block(
                INTERNAL, f"invalid gRPC request content-type {content_type.decode('latin-1')!r}"))
            return
        method = self.table.get(path)
        if method is None:
            self._refuse(connection, stream, UNIMPLEMENTED, f"Method not found: {path.decode('latin-1')}")
            return
        if self.restricted is not None:
            denial = grpc_denied(self.restricted, method.name, stream.headers)
            if denial is not None:
                self._refuse(connection, stream, PERMISSION_DENIED, denial)
                return
        if stream.encoding not in _ENCODINGS:
            self._refuse(connection, stream, UNIMPLEMENTED,
                         f"grpc-encoding {stream.encoding.decode('latin-1')} is not supported")
            return
        if timeout:
            seconds = parse_timeout(timeout)
            if seconds is None:
                self._refuse(connection, stream, INTERNAL, f"malformed grpc-timeout {timeout.decode('latin-1')}")
                return
            stream.deadline = anyio.current_time() + seconds
        stream.method = method
        if method.request_streaming:
            stream.inbox = deque()
            self.start(connection, stream)
        elif stream.remote_ended:
            self.request_end(connection, stream)

    def request_data(self, connection: Connection, stream: Stream, payload: bytes) -> None:
        """DATA of ``stream``: split it into messages, for the call."""
        if stream.method is None or stream.local_ended or stream.error is not None:
            return  # refused or failing already: discarded
        buffer = stream.rbuf
        if not buffer and payload[0] == 0 and len(payload) >= 5 and int.from_bytes(payload[1:5], "big") == len(payload) - 5:
            self._message(connection, stream, payload[5:], False, len(payload))  # one whole message: the usual case
            return
        buffer += payload
        while len(buffer) >= 5:
            size = int.from_bytes(buffer[1:5], "big")
            if size > self.max_message_size:
                self._fail(connection, stream, RESOURCE_EXHAUSTED,
                           f"Received message larger than max ({size} vs. {self.max_message_size})")
                buffer.clear()
                return
            if len(buffer) < 5 + size:
                return
            compressed = bool(buffer[0] & 1)
            message = bytes(buffer[5:5 + size])
            del buffer[:5 + size]
            self._message(connection, stream, message, compressed, 5 + size)
            if stream.local_ended or stream.error is not None:
                return

    def _message(self, connection: Connection, stream: Stream, message: bytes, compressed: bool, wire: int) -> None:
        if len(message) > self.max_message_size:
            self._fail(connection, stream, RESOURCE_EXHAUSTED,
                       f"Received message larger than max ({len(message)} vs. {self.max_message_size})")
            return
        if compressed:
            wbits = _ENCODINGS[stream.encoding]
            if not wbits:
                self._fail(connection, stream, INTERNAL, "compressed message without a grpc-encoding")
                return
            inflater = zlib.decompressobj(wbits)
            try:
                message = inflater.decompress(message, self.max_message_size + 1)
            except zlib.error:
                self._fail(connection, stream, INTERNAL, "cannot decompress the message")
                return
            if len(message) > self.max_message_size or inflater.unconsumed_tail:
                self._fail(connection, stream, RESOURCE_EXHAUSTED,
                           f"Received message larger than max (more than {self.max_message_size} bytes decompressed)")
                return
        if stream.inbox is not None:
            stream.inbox.append((message, wire))
            stream.wake()
        elif stream.message is None:
            stream.message = message
        else:
            self._fail(connection, stream, INTERNAL, "a second request message in a unary call")

    def request_end(self, connection: Connection, stream: Stream) -> None:
        """The client's END_STREAM: a unary call starts; a streaming one's requests end."""
        if stream.method is None or stream.local_ended or stream.error is not None:
            return
        if stream.inbox is not None:
            stream.wake()
            return
        if stream.rbuf:
            self._refuse(connection, stream, INTERNAL, "the request ended inside a message")
        elif stream.message is None:
            self._refuse(connection, stream, UNIMPLEMENTED, "a unary call without a request message")
        else:
            self.start(connection, stream)

    def _refuse(self, connection: Connection, stream: Stream, code: int, message: str) -> None:
        connection.send_trailers(stream, status_block(code, message, trailers_only=not stream.headers_sent))

    def _fail(self, connection: Connection, stream: Stream, code: int, message: str) -> None:
        """End ``stream`` with a status: at once if its call has not started, else by
        cancelling the call, which then sends it."""
        if stream.call_started:
            stream.error = (code, message)
            if stream.scope is not None:
                stream.scope.cancel()
        else:
            self._refuse(connection, stream, code, message)

    def start(self, connection: Connection, stream: Stream) -> None:
        """Run the call in an idle worker task, or in a new one (also a call another worker
        relayed here: :mod:`.relay`)."""
        stream.call_started = True
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():
                waiter.set_result((connection, stream))
                return
        self._tg.start_soon(self._worker, connection, stream)

    async def _worker(self, connection: Connection, stream: Stream) -> None:
        """Run calls, one after another, while there are calls for it; then wait among the
        idle workers (at most :data:`MAX_IDLE_WORKERS`, else it ends).

        Why workers rather than a task per call: starting a task in the task group and
        running it cost ~50 µs, handing a call to a waiting worker ~7 µs (measured), at a
        budget of ~240 µs per request for the whole server.
        """
        loop = asyncio.get_running_loop()
        idle = self._idle
        job: tuple[Connection, Stream] | None = (connection, stream)
        del connection, stream
        while job is not None:
            try:
                await self._run(*job)
            except Exception:  # our bug: it ends that call's connection, not the server's task group
                log.exception("gRPC: a call failed outside its handler")
                job[0].abort()
            if len(idle) >= MAX_IDLE_WORKERS:
                return
            waiter: asyncio.Future[tuple[Connection, Stream]] = loop.create_future()
            idle.append(waiter)
            job = None  # hold nothing of the last call while idle
            job = await waiter

    # ---------------------------------------------------------------------- the call

    async def compress(self, stream: Stream, level: str, payload: bytes) -> tuple[bytes, bytes]:
        """The response HEADERS and the message (5-byte prefix and all) carrying ``payload``
        on ``stream``, compressed at ``level`` with the algorithm gRPC's core would choose for
        the client's ``grpc-accept-encoding`` (uncompressed if it accepts neither gzip nor
        deflate). A response over :data:`COMPRESS_ON_LOOP_MAX` bytes is compressed in a worker
        thread; cancelled meanwhile, it waits for that thread."""
        encoding = response_encoding(level, accept_encoding(stream))
        if encoding is None:
            return RESPONSE_HEAD, b"\0" + len(payload).to_bytes(4, "big") + payload
        name, wbits = encoding
        if len(payload) <= COMPRESS_ON_LOOP_MAX:
            return _ENCODED_HEADS[name], compressed_message(payload, wbits, ZLIB_LEVELS[level])
        data = await anyio.to_thread.run_sync(compressed_message, payload, wbits, ZLIB_LEVELS[level])
        return _ENCODED_HEADS[name], data

    async def _run(self, connection: Connection, stream: Stream) -> None:
        relay = self.relay
        if relay is None or stream.method is not relay.method:
            await self._run_here(connection, stream)
            return
        if not connection.relayed and not self.stopping:
            peer = relay.peer(stream.message or b"")
            if peer is not None and await self._relayed(relay, peer, connection, stream):
                return
        with relay.running():
            await self._run_here(connection, stream)

    async def _relayed(self, relay: Relay, peer: int, connection: Connection, stream: Stream) -> bool:
        """Have worker ``peer`` run the call and answer with what it answered; False if it
        refused it unrun (it is stopping, or cannot be reached): then it runs here."""
        answer = None
        with anyio.CancelScope(deadline=stream.deadline) as scope:
            stream.scope = scope
            if stream.reset or stream.error is not None:
                scope.cancel()
            try:
                answer = await relay.call(peer, stream)
            except RelayLostError:
                answer = (TRAILERS, b"", b"", status_block(
                    UNAVAILABLE, f"worker {peer}, which ran this call, closed the connection (it may have "
                    "died; retry once it is started again)", trailers_only=True))
            if answer is None:
                return False
        if stream.reset or connection.closed:
            return True
        if answer is None:  # cancelled: the client reset the stream, or the deadline passed
            code, message = self._cancelled(stream)
            connection.send_trailers(stream, status_block(code, message, trailers_only=not stream.headers_sent))
        elif answer[0] == TRAILERS:
            connection.send_trailers(stream, answer[3])
        else:
            connection.respond(stream, *answer[1:])
        return True

    def _cancelled(self, stream: Stream) -> tuple[int, str]:
        """The status of a call whose scope was cancelled: an error set on the stream, its
        deadline, or the client's cancellation."""
        if stream.error is not None:
            return stream.error
        if anyio.current_time() >= stream.deadline:
            return DEADLINE_EXCEEDED, "Deadline Exceeded"
        return CANCELLED, "Cancelled"

    async def _run_here(self, connection: Connection, stream: Stream) -> None:
        method = stream.method
        assert method is not None
        context = Context(self, connection, stream, method)
        code, message = OK, ""
        payload: bytes | None = None
        with anyio.CancelScope(deadline=stream.deadline) as scope:
            stream.scope = scope
            if stream.reset or stream.error is not None:
                scope.cancel()
            try:
                if method.request_streaming:
                    request: Any = context.requests()
                else:
                    data, stream.message = stream.message, None
                    try:
                        request = method.deserialize(data)  # type: ignore[arg-type]
                    except DecodeError:
                        raise _Abort(INTERNAL, "Exception deserializing request!") from None
                if method.response_streaming:
                    result = method.handler(request, context)
                    if hasattr(result, "__aiter__"):
                        async for response in result:
                            await context.write(response)
                    else:
                        await result
                else:
                    payload = method.serialize(await method.handler(request, context))
            except _Abort as exc:
                code, message = exc.code, exc.details
            except Exception as exc:  # the boundary: a handler's bug becomes UNKNOWN
                log.exception("gRPC: %s failed", method.name)
                code, message = UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}"
        if stream.reset or connection.closed:
            return  # the client is gone: nobody to answer
        if scope.cancelled_caught:
            payload = None
            code, message = self._cancelled(stream)
        if payload is not None:
            if len(payload) > self.max_message_size:
                code, message = RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(payload)} vs. {self.max_message_size})"
            elif method.compression:
                head, data = await self.compress(stream, method.compression, payload)
                if not (stream.reset or connection.closed):
                    connection.respond(stream, head, data, OK_TRAILERS)
                return
            else:
                connection.respond(stream, RESPONSE_HEAD, b"\0" + len(payload).to_bytes(4, "big") + payload, OK_TRAILERS)
                return
        if code == OK and not message:
            block = RESPONSE_HEAD + OK_TRAILERS if not stream.headers_sent else OK_TRAILERS
        else:
            block = status_block(code, message, trailers_only=not stream.headers_sent)
        connection.send_trailers(stream, block)
