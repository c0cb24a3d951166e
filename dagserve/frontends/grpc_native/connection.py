"""One HTTP/2 connection (RFC 9113) as an asyncio protocol: frames in, frames out.

Only what a gRPC server needs, in the style of the HTTP/1.1 server (:mod:`..http.server`):
``data_received`` parses whole frames out of the bytes received and acts on them at once; the
gRPC layer (:class:`~.calls.Calls`) is told of a new stream's headers, its DATA payloads and
its end, and answers through :meth:`Connection.respond`, :meth:`Connection.send_message` and
:meth:`Connection.send_trailers`. There is no task per connection: a call's handler task is
the only task, and most answers (a unary call whose response fits the client's windows) leave
in one ``transport.write`` of HEADERS, DATA and trailers.

Flow control both ways: DATA is sent within the client's connection and stream windows, the
rest queued per stream and sent as WINDOW_UPDATEs arrive; the client's windows are topped up
(batched: once half of a window is used) as its DATA is received, or, for a streaming request,
as the handler takes its messages, so a handler that stops reading pushes back on the client.

A connection error (a malformed or illegal frame) is answered with GOAWAY and its error code,
and the connection closes; a stream error with RST_STREAM. A graceful stop
(:meth:`Connection.begin_stop`) sends GOAWAY(2^31-1) and a PING; once the client acks it, every
stream the client sent before has arrived, and GOAWAY with the last stream id follows: those
streams are answered, later ones refused, and the connection closes when the last one ends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import anyio

from .hpack import Decoder, HPACKError

if TYPE_CHECKING:
    from .calls import Calls, Method

__all__ = ["Connection", "Stream"]

log = logging.getLogger("dagserve.frontends.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
# Settings.
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 3, 4, 5
MAX_HEADER_LIST_SIZE = 6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535

OUR_MAX_STREAMS = 4096
"""Streams a client may have open on one connection; more are refused (REFUSED_STREAM)."""
OUR_WINDOW = 1 << 24
"""The receive window, per stream and for the connection: 16 MiB in flight before the client
waits for a WINDOW_UPDATE (topped up once half is used)."""
OUR_MAX_FRAME = 1 << 20
OUR_MAX_HEADER_LIST = 1 << 20
"""A header block past this (decoded) is a connection error: it bounds what one block costs."""

_FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits, as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
_PING_STOP = b"dgsstop\x00"
_PING_KEEPALIVE = b"dgskeep\x00"
_STOP_PING_WAIT = 1.0
"""Seconds a stopping server waits for the client's PING ack before the final GOAWAY."""

_SETTINGS = struct.pack(
    ">HIHIHIHI", MAX_CONCURRENT_STREAMS, OUR_MAX_STREAMS, INITIAL_WINDOW_SIZE, OUR_WINDOW,
    MAX_FRAME_SIZE, OUR_MAX_FRAME, MAX_HEADER_LIST_SIZE, OUR_MAX_HEADER_LIST,
)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, head and payload."""
    length = len(payload)
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


_OUR_PREAMBLE = frame(SETTINGS, 0, 0, _SETTINGS) + frame(WINDOW_UPDATE, 0, 0, _U32.pack(OUR_WINDOW - DEFAULT_WINDOW))
_SETTINGS_ACK = frame(SETTINGS, ACK, 0)


class ConnectionProtocolError(Exception):
    """A connection error: GOAWAY with ``code``, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One request stream: what the gRPC layer and the connection know of it."""

    __slots__ = (
        "call_started", "deadline", "encoding", "error", "headers", "headers_sent", "id", "inbox",
        "local_ended", "message", "method", "outbox", "rbuf", "recv_unacked", "recv_window", "remote_ended",
        "reset", "scope", "send_window", "trailers", "waiters",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_window = OUR_WINDOW
        self.recv_unacked = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.method: Method | None = None
        self.encoding = b""
        self.deadline = float("inf")
        self.rbuf = bytearray()
        self.message: bytes | None = None  # a unary call's one request message
        self.inbox: deque[tuple[bytes, int]] | None = None  # a streaming call's messages not taken
        # yet, each with its size on the wire (credited back to the client's window once taken)
        self.remote_ended = False  # the client sent END_STREAM
        self.local_ended = False  # we sent END_STREAM (trailers) or RST_STREAM
        self.reset = False  # the client reset it (or the connection is gone)
        self.headers_sent = False
        self.outbox: deque[memoryview] = deque()  # DATA waiting for flow-control window
        self.trailers: bytes | None = None  # trailers waiting behind the outbox
        self.scope: anyio.CancelScope | None = None
        self.call_started = False
        self.error: tuple[int, str] | None = None  # a status the call must end with (set before cancelling it)
        self.waiters: list[asyncio.Future[None]] = []  # a reader and a writer may both wait

    def wake(self) -> None:
        """Wake whoever waits on the stream; each re-checks its own condition."""
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        """Until :meth:`wake`."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        await waiter


class Connection(asyncio.Protocol):
    """One HTTP/2 connection of the native gRPC server (see the module docstring)."""

    relayed = False
    """Whether its calls come from another worker (:mod:`.relay`): they are not relayed again."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._rest = b""
        self._preface = False
        self._decoder = Decoder(max_header_list_size=OUR_MAX_HEADER_LIST)
        self._continuation: tuple[int, int, list[bytes]] | None = None
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.send_window = DEFAULT_WINDOW
        self._recv_window = OUR_WINDOW
        self._conn_unacked = 0
        self._peer_window = DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_max_frame = 16384
        self._blocked: dict[int, Stream] = {}  # streams with DATA waiting for window, in order
        self.closed = False
        self.write_paused = False
        self._broken = False  # a connection error was sent: read no further
        self.goaway_sent = False  # the final GOAWAY: no new streams
        self._stop_ping_sent = False
        self._peer_goaway = False
        now = self._loop.time()
        self.born = now
        self.idle_since = now  # when the last stream ended (or the connection began)
        self.last_read = now
        self.ping_sent_at: float | None = None  # a keepalive PING awaiting its ack
        self._ping_received_at = float("-inf")  # the client's last PING since we last sent HEADERS/DATA
        self._ping_strikes = 0
        self.aged = False  # max connection age reached: GOAWAY sent, closing after the grace

    # ----------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        calls = self._calls
        calls.open_transports.add(transport)
        if calls.stopping:
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        calls.connections.add(self)
        transport.write(_OUR_PREAMBLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            self._abandon(stream)
        self.streams.clear()
        self._blocked.clear()
        self._calls.lost(self, self._transport)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.wake()

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self.last_read = self._loop.time()
        if self._rest:
            data = self._rest + data
            self._rest = b""
        position = 0
        if not self._preface:
            if len(data) < 24:
                if not PREFACE.startswith(data):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                self._rest = data
                return
            if not data.startswith(PREFACE):
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self._preface = True
            position = 24
        end = len(data)
        unpack = _FRAME_HEAD.unpack_from
        try:
            while end - position >= 9:
                high, low, kind, flags, stream_id = unpack(data, position)
                length = high << 16 | low
                if length > OUR_MAX_FRAME:
                    raise ConnectionProtocolError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - position - 9 < length:
                    break
                start = position + 9
                position = start + length
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, data[start:position])
                if self._broken:
                    return
        except ConnectionProtocolError as exc:
            self._fail(exc.code, str(exc))
            return
        except Exception:  # our bug, not the client's: this connection ends, the server goes on
            log.exception("gRPC: failed to handle a frame")
            self._fail(INTERNAL_ERROR, "internal error")
            return
        if position < end:
            self._rest = data[position:]

    # ---------------------------------------------------------------------- frames in

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != CONTINUATION:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            self._ping(flags, stream_id, payload)
        elif kind == RST_STREAM:
            if stream_id == 0:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise ConnectionProtocolError(FRAME_SIZE_ERROR, "RST_STREAM of a wrong size")
            if stream_id > self.last_stream_id:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                self._abandon(stream)
                self._stream_gone()
        elif kind == CONTINUATION:
            pending = self._continuation
            if pending is None or pending[0] != stream_id:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            pending[2].append(payload)
            if sum(map(len, pending[2])) > OUR_MAX_HEADER_LIST:
                raise ConnectionProtocolError(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                self._continuation = None
                self._header_block(pending[0], pending[1], b"".join(pending[2]))
        elif kind == GOAWAY:
            if stream_id != 0:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "GOAWAY on a stream")
            self._peer_goaway = True
            if not self.streams:
                self._transport.close()
        elif kind == PRIORITY:
            if stream_id == 0:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise ConnectionProtocolError(FRAME_SIZE_ERROR, "PRIORITY of a wrong size")
        elif kind == PUSH_PROMISE:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # any other type is an extension: ignored (RFC 9113 5.5)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or not stream_id & 1:
            raise ConnectionProtocolError(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & (PADDED | PRIORITY_FLAG):
            start, end = 0, len(payload)
            if flags & PADDED:
                if not payload:
                    raise ConnectionProtocolError(PROTOCOL_ERROR, "PADDED HEADERS without a pad length")
                start, end = 1, end - payload[0]
            if flags & PRIORITY_FLAG:
                start += 5
            if end < start:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "padding longer than the HEADERS payload")
            payload = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self._continuation = (stream_id, flags, [payload])

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)
        except HPACKError as exc:
            raise ConnectionProtocolError(COMPRESSION_ERROR, str(exc)) from None
        end = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: the end of its request
            if not end:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            if not stream.remote_ended:
                stream.remote_ended = True
                self._calls.request_end(self, stream)
            return
        if stream_id <= self.last_stream_id:
            raise ConnectionProtocolError(STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.last_stream_id = stream_id
        if self.goaway_sent:
            return  # past the last stream id we accept: the client knows it was refused
        if len(self.streams) >= OUR_MAX_STREAMS:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        stream = Stream(stream_id, self._peer_window)
        stream.headers = headers
        stream.remote_ended = end
        self.streams[stream_id] = stream
        self._calls.request_headers(self, stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise ConnectionProtocolError(FLOW_CONTROL_ERROR, "DATA past the connection window")
        # The connection window is topped up as DATA arrives; streams bound what is buffered.
        self._conn_unacked += size
        if self._conn_unacked >= OUR_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked)))
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionProtocolError(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream already answered or reset: discarded
        if stream.remote_ended:
            self._reset(stream, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "padding longer than the DATA payload")
            pad = payload[0]
            stream.recv_unacked += 1 + pad  # padding is never a message's: credit it now
            payload = payload[1:size - pad]
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_ended = True
        if payload:
            self._calls.request_data(self, stream, payload)
        if stream.inbox is None:  # not a streaming request: credit what arrived
            stream.recv_unacked += len(payload)
        if not end and stream.recv_unacked >= OUR_WINDOW // 2 and not stream.local_ended:
            self.credit(stream)
        if end and stream_id in self.streams:
            self._calls.request_end(self, stream)

    def credit(self, stream: Stream, size: int = 0) -> None:
        """Give the client back ``size`` more bytes of ``stream``'s window (what a handler
        took), sent once half the window is owed."""
        stream.recv_unacked += size
        owed = stream.recv_unacked
        if owed >= OUR_WINDOW // 2 and not stream.remote_ended and not self.closed:
            self._write(frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(owed)))
            stream.recv_window += owed
            stream.recv_unacked = 0

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionProtocolError(FLOW_CONTROL_ERROR, "connection window past 2^31-1")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionProtocolError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if increment == 0:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream.outbox or stream.trailers is not None:
            self._flush(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionProtocolError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ConnectionProtocolError(FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        for position in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, position)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionProtocolError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE past 2^31-1")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionProtocolError(FLOW_CONTROL_ERROR, "stream window past 2^31-1")
                if delta > 0:
                    self._flush_blocked()
            elif key == MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise ConnectionProtocolError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise ConnectionProtocolError(PROTOCOL_ERROR, "ENABLE_PUSH neither 0 nor 1")
            # HEADER_TABLE_SIZE bounds the table of our encoder, which uses none; the others
            # bound what a server pushes or sends in headers, and ours are small and fixed.
        self._write(_SETTINGS_ACK)

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionProtocolError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionProtocolError(FRAME_SIZE_ERROR, "PING of a wrong size")
        if flags & ACK:
            if payload == _PING_STOP:
                self.final_goaway()
            elif payload == _PING_KEEPALIVE:
                self.ping_sent_at = None
            return
        policy = self._calls.ping_policy
        now = self._loop.time()
        interval = policy.min_interval if self.streams or policy.permit_without_calls else 7200.0
        if now - self._ping_received_at < interval:
            self._ping_strikes += 1
            if policy.max_strikes and self._ping_strikes > policy.max_strikes:
                raise ConnectionProtocolError(ENHANCE_YOUR_CALM, "too_many_pings")
        self._ping_received_at = now
        self._write(frame(PING, ACK, 0, payload))

    def _sent_data(self) -> None:
        """HEADERS or DATA went out: the client's PINGs are welcome again (ping policing)."""
        self._ping_received_at = float("-inf")
        self._ping_strikes = 0

    # -------------------------------------------------------------------- frames out

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self._transport.write(data)

    def respond(self, stream: Stream, head: bytes, data: bytes, trailers: bytes) -> None:
        """Answer ``stream`` whole: the response HEADERS block ``head`` (unless sent),
        ``data`` (framed gRPC messages) and the ``trailers`` block, in one write when the
        client's windows allow."""
        if stream.local_ended or self.closed:
            return
        self._ping_received_at, self._ping_strikes = float("-inf"), 0  # _sent_data(), inlined
        size = len(data)
        if (
            not stream.headers_sent and size <= self.send_window and size <= stream.send_window
            and size <= self.peer_max_frame and not stream.outbox
        ):
            self.send_window -= size
            stream.send_window -= size
            stream.headers_sent = True
            sid = stream.id
            self._write(
                frame(HEADERS, END_HEADERS, sid, head) + frame(DATA, 0, sid, data)
                + frame(HEADERS, END_HEADERS | END_STREAM, sid, trailers)
            )
            self._ended(stream)
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(frame(HEADERS, END_HEADERS, stream.id, head))
        self.send_data(stream, data)
        self.send_trailers(stream, trailers)

    def send_headers(self, stream: Stream, head: bytes) -> None:
        if not stream.headers_sent and not stream.local_ended:
            stream.headers_sent = True
            self._sent_data()
            self._write(frame(HEADERS, END_HEADERS, stream.id, head))

    def send_data(self, stream: Stream, data: bytes) -> None:
        """Send ``data`` on ``stream`` as the windows allow; queue the rest."""
        if stream.local_ended or self.closed or not data:
            return
        stream.outbox.append(memoryview(data))
        self._flush(stream)

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        """End ``stream`` with the trailers ``block`` (HEADERS, END_STREAM), after its
        queued DATA; a stream whose headers were not sent gets a trailers-only response."""
        if stream.local_ended or self.closed:
            return
        stream.trailers = block
        self._flush(stream)

    def _flush(self, stream: Stream) -> None:
        outbox = stream.outbox
        max_frame = self.peer_max_frame
        parts: list[bytes | memoryview] = []
        sid = stream.id
        while outbox:
            room = min(self.send_window, stream.send_window, max_frame)
            if room <= 0:
                break
            chunk = outbox[0]
            if len(chunk) > room:
                outbox[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                outbox.popleft()
            size = len(chunk)
            self.send_window -= size
            stream.send_window -= size
            parts.append(_FRAME_HEAD.pack(size >> 16, size & 0xFFFF, DATA, 0, sid))
            parts.append(chunk)
        if outbox:
            self._blocked[sid] = stream
        else:
            self._blocked.pop(sid, None)
            if stream.trailers is not None:
                parts.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, stream.trailers))
                stream.trailers = None
                if parts and not self.closed:
                    self._transport.writelines(parts)
                self._ended(stream)
                return
            stream.wake()  # a writer waiting for its DATA to go out
        if parts and not self.closed:
            self._sent_data()
            self._transport.writelines(parts)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self.send_window <= 0:
                break
            self._flush(stream)

    def _ended(self, stream: Stream) -> None:
        """We sent END_STREAM: the stream is done on our side; a client still sending is
        told to stop (RST_STREAM NO_ERROR, RFC 9113 8.1)."""
        stream.local_ended = True
        stream.wake()
        if not stream.remote_ended:
            self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR)))
        if self.streams.pop(stream.id, None) is not None:
            self._stream_gone()

    def _reset(self, stream: Stream, code: int) -> None:
        """A stream error: RST_STREAM with ``code``, and the call is cancelled."""
        self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        self.streams.pop(stream.id, None)
        self._abandon(stream)
        self._stream_gone()

    def _abandon(self, stream: Stream) -> None:
        """The stream is gone (reset, or the connection lost): cancel its call."""
        stream.reset = True
        stream.local_ended = True
        stream.outbox.clear()
        self._blocked.pop(stream.id, None)
        stream.wake()
        if stream.scope is not None:
            stream.scope.cancel()

    def _stream_gone(self) -> None:
        if not self.streams:
            self.idle_since = self._loop.time()
            if self.goaway_sent or self._peer_goaway:
                self._transport.close()

    async def writable(self, stream: Stream) -> None:
        """Wait until ``stream``'s queued DATA is sent and the transport takes more (a
        streaming response's writer: backpressure from a client that does not read)."""
        while (stream.outbox or self.write_paused) and not stream.local_ended and not self.closed:
            await stream.wait()

    # ---------------------------------------------------------------- lifecycle

    def _fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY with ``code``, then close."""
        log.info("gRPC: closing a connection: %s (HTTP/2 error %d)", message, code)
        self._broken = True
        self.goaway_sent = True
        self._write(frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream_id, code) + message.encode()[:256]))
        self._transport.close()

    def begin_stop(self) -> None:
        """Graceful stop, step one: GOAWAY(2^31-1) and a PING (see the module docstring)."""
        if self.closed or self.goaway_sent or self._stop_ping_sent:
            return
        if not self._preface:  # nothing received: nothing to answer
            self.final_goaway()
            return
        self._stop_ping_sent = True
        self._write(frame(GOAWAY, 0, 0, _GOAWAY.pack(MAX_WINDOW, NO_ERROR)) + frame(PING, 0, 0, _PING_STOP))
        self._loop.call_later(_STOP_PING_WAIT, self.final_goaway)

    def final_goaway(self, message: bytes = b"") -> None:
        """GOAWAY with the last stream id: no new streams; close once the open ones end."""
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        self._write(frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream_id, NO_ERROR) + message))
        if not self.streams:
            self._transport.close()

    def keepalive_ping(self) -> None:
        self.ping_sent_at = self._loop.time()
        self._write(frame(PING, 0, 0, _PING_KEEPALIVE))

    def close(self) -> None:
        if not self.closed:
            self._transport.close()

    def abort(self) -> None:
        if not self.closed:
            self._transport.abort()

    def extra(self, name: str) -> Any:
        return self._transport.get_extra_info(name) if self._transport is not None else None
