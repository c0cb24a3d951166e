"""dagserve's HTTP/1.1 server: ``/infer`` answered directly, every other route through ASGI.

uvicorn costs a task, an event, a scope dict, an ASGI message round trip and two socket
writes per request (docs/performance.md, "HTTP server choice", has the numbers). This server
parses with httptools, the parser uvicorn itself uses, and keeps the hot path flat:

* one :class:`_Connection` (an asyncio protocol) per TCP connection, and one task per
  connection, started with its first request, that answers its requests in order. Parser callbacks
  turn each message into a :class:`~.bridge.Request` on the connection's queue; pipelined
  requests wait their turn, and reading pauses while one waits behind the request in flight;
* ``POST /v2/models/{m}[/versions/{v}]/infer`` is read whole and answered by an
  :class:`InferResponder` (:class:`~.infer.InferCore`); the reply goes out in one
  ``transport.write``, head and body together;
* anything else runs the ASGI app with ``receive``/``send`` bridged onto the connection
  (:class:`~.bridge.Exchange`).

The server is the one place the transport's limits are enforced, for every route: a request
head past :attr:`~..limits.HttpLimits.max_header_size` is answered 431, a body declared or
sent past ``max_body_size`` 413 (both close the connection). Slow and idle clients are bounded
by :class:`~..limits.HttpLimits` too: one periodic sweep (:meth:`_State.sweep`) closes
connections whose headers, body or reading of the response stall past their timeout, and
connections past ``max_connections`` are answered 503 and closed.

A client that disconnects while its infer request runs cancels it (out of its queue, or its
pipeline); the connection learns of it from ``connection_lost`` at once, so no watcher task
is needed. ASGI requests are not cancelled: they see ``http.disconnect`` from ``receive``
and their ``send`` becomes a no-op, as under uvicorn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import socket
import ssl as ssl_module
import struct
import termios
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import unquote

import anyio
import httptools
from anyio.abc import TaskGroup, TaskStatus

from ...errors import InvalidInputError
from ..accept import Balance, Tracker, listen
from ..http_codec import BodyTooLargeError
from ..limits import HttpLimits
from .bridge import CONTINUE, HIGH_WATER, Exchange, Request
from .replies import Reply, error_reply, simple_response, status_line

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = ["DEFAULT_MAX_BODY_SIZE", "InferResponder", "bind", "serve_app", "serve_http11"]

log = logging.getLogger("dagserve.frontends")

_LINGER_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, 0 s: ``close`` resets the connection and discards unsent output."""

_LARGE = 1 << 20
"""Bodies from this size go out with ``writelines``: one call, no copy to join them."""

DEFAULT_MAX_BODY_SIZE = 256 * 1024 * 1024
"""Largest request body, in bytes, unless the caller says otherwise."""


class _HeadTooLargeError(Exception):
    """A request head past ``max_header_size`` (answered 431)."""


class InferResponder(Protocol):
    """What the server asks of the ``/infer`` implementation (:class:`~.infer.InferCore`)."""

    def target(self, path: str) -> tuple[str, str] | None:
        """``(model, version)`` for an infer path, else ``None``."""

    async def reply(
        self, model: str, version: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Reply:
        """Serve one request whose body has been read; never raises but on cancellation."""


STOP_GRACE = 0.5
"""Seconds a graceful stop keeps a recently used idle keep-alive connection open (see
:meth:`_State.drain`)."""

STOP_RECENT = 1.0
"""An idle connection used (opened, or answered) within this many seconds before the stop is
"recently used": its client may be sending on it right now."""


class _State(Tracker["_Connection"]):
    """What the connections of one server share: the handlers, the task group their tasks
    live in, its limits (``max_body_size`` bounds every request body), and the open
    connections and transports (a :class:`~..accept.Tracker`: for the timeout sweep and
    graceful shutdown)."""

    __slots__ = (
        "_refused", "_refused_logged", "_tg", "aborting", "app", "grace_until", "infer", "limits", "max_body_size",
        "stop_grace", "stopped_at", "stopping",
    )

    def __init__(
        self, app: ASGIApp, infer: InferResponder, tg: TaskGroup, limits: HttpLimits | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        super().__init__()
        self.app = app
        self.infer = infer
        self.limits = limits or HttpLimits()
        self.max_body_size = max_body_size
        self._refused = 0  # connections refused at the limit since the last warning
        self._refused_logged = -1e9
        self.stopping = False
        self.aborting = False
        self.stop_grace = STOP_GRACE
        self.stopped_at = self.grace_until = 0.0  # loop.time(): when the stop began; its grace's end
        self._tg = tg

    def protocol(self) -> _Connection:
        """The protocol factory for ``loop.create_server``."""
        return _Connection(self)

    def spawn(self, connection: _Connection) -> None:
        """Start the connection's task, in the server's task group."""
        self._tg.start_soon(connection.run)

    def refused_one(self, now: float) -> None:
        """Count a connection refused at ``max_connections``; warn at most every 10 s."""
        self._refused += 1
        if now - self._refused_logged >= 10:
            log.warning("HTTP: %d connections open (the limit): refused %d connection(s)",
                        self.limits.max_connections, self._refused)
            self._refused, self._refused_logged = 0, now

    async def sweep(self) -> None:
        """Enforce the timeouts of :attr:`limits` on every connection, until cancelled.

        One periodic sweep rather than a timer per request: arming and cancelling a timer
        on every response would cost more than the whole check.
        """
        loop = asyncio.get_running_loop()
        limits = self.limits
        while True:
            await anyio.sleep(limits.sweep_period)
            now = loop.time()
            for connection in list(self.connections):
                connection.check_timeouts(now, limits)

    async def drain(self) -> None:
        """Close idle connections, let busy ones finish their request, wait until all are
        gone.

        An idle keep-alive connection that was used in the last :data:`STOP_RECENT` seconds
        stays open for :data:`STOP_GRACE` seconds, and a request that arrives on it meanwhile
        is answered (with ``connection: close``): its client may have sent it, or be sending
        it, as the stop began, and HTTP/1.1 gives a client no way to tell a request the server
        never read from one it dropped (gRPC's GOAWAY does), so closing the connection under
        it loses the request. Measured: a client busy with 16 requests sent a body 3 ms after
        the server's SIGTERM on a connection it had taken before it. Connections idle for
        longer close at once, so an idle server still stops at once.
        """
        loop = asyncio.get_running_loop()
        self.stopping = True
        self.stopped_at = loop.time()
        self.grace_until = self.stopped_at + self.stop_grace
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections and self.stop_grace > 0:
            with anyio.move_on_after(self.stop_grace):
                await self.connections_gone()
            self.grace_until = 0.0
            for connection in list(self.connections):
                connection.shutdown()  # the grace is over: the idle ones close now
        await self.connections_gone()

    def in_grace(self, idle_since: float) -> bool:
        """Whether a connection idle since ``idle_since`` (loop time) stays open for now in a
        graceful stop (see :meth:`drain`)."""
        return idle_since >= self.stopped_at - STOP_RECENT and asyncio.get_running_loop().time() < self.grace_until


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parser callbacks feed the queue, :meth:`run` answers it.

    The task waits on futures from :meth:`_wait`; every event it may be waiting for (a
    request, body bytes, drained writes, the connection's end) calls :meth:`_wake`, and each
    wait re-checks its own condition, so one mechanism serves all of them.
    """

    __slots__ = (
        "_body_since", "_broken", "_chunk_size", "_draining", "_head_size", "_headers_pending", "_idle_since", "_in_infer", "_loop",
        "_max_head", "_message_since", "_parser", "_parsing", "_queue", "_read_paused", "_reused", "_running",
        "_scope", "_state", "_stopping", "_transport", "_url", "_waiters", "_write_size", "_write_stalled_since",
        "closed", "max_body_size", "write_paused",
    )

    def __init__(self, state: _State) -> None:
        self._state = state
        self.max_body_size = state.max_body_size
        self._max_head = state.limits.max_header_size
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        try:
            # Answer a "Connection: close" request even when the client sent more after it.
            self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # httptools < 0.6.3
            pass
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._queue: deque[Request] = deque()
        self._parsing: Request | None = None  # the message being parsed (the newest)
        self._url = b""
        self._waiters: list[asyncio.Future[None]] = []
        self.closed = False  # the connection is gone
        self._stopping = False  # close after the response in progress
        self._draining = False  # the server is stopping: answer what the client has sent, then close
        self._broken = False  # unparseable input or an upgrade: read no further
        self._read_paused = False
        self.write_paused = False
        self._scope: anyio.CancelScope | None = None
        self._in_infer = False
        self._running = False  # the task has been started
        self._idle_since = self._message_since = self._body_since = self._loop.time()
        self._headers_pending = False  # a request's first bytes came, its headers not yet whole
        self._head_size = 0  # bytes received while the pending head was pending
        self._chunk_size = 0  # bytes of the chunk being parsed
        self._reused = False  # a response was sent: idle time is keep-alive time
        self._write_size = 0
        self._write_stalled_since: float | None = None

    @property
    def stopping(self) -> bool:
        """Whether the connection closes after the response in progress."""
        return self._stopping

    # ----------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, hence the cast).
        self._transport = transport = cast(asyncio.Transport, transport)
        state = self._state
        state.open_transports.add(transport)
        if state.stopping and not state.in_grace(self._idle_since):
            transport.close()
            return
        limit = state.limits.max_connections
        if limit and len(state.connections) >= limit:
            state.refused_one(self._loop.time())
            transport.write(simple_response(503, f"too many connections (the server's limit is {limit})"))
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:  # asyncio and uvloop set it already for IPPROTO_TCP sockets; make sure
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        state.connections.add(self)
        if state.stopping:
            self.shutdown()  # accepted just before the listener closed: its request is coming

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        # The head limit, cheaply: bytes arriving while a head is pending belong to it (bar
        # what follows its end), counted before feeding and checked after, which bounds a
        # single endless header that httptools would buffer whole; a head that ends in this
        # chunk is measured exactly by on_headers_complete, only when it might be too large.
        self._chunk_size = size = len(data)
        if self._headers_pending:
            self._head_size += size
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request is answered as plain HTTP/1.1; what follows it is another
            # protocol's, so the connection ends after the answer.
            if self._queue:
                self._queue[-1].keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as exc:
            self._malformed(exc)
            return
        if self._headers_pending and self._head_size > self._max_head:
            self._head_too_large()

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed client is treated as gone, as uvicorn does

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._in_infer and self._scope is not None:
            self._scope.cancel()  # the client left: take its request off the queue
        self._wake()
        self._state.lost(self, self._transport)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_stalled_since = None  # the client is reading: the write timeout restarts
        self._wake()

    # ----------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._parsing = Request()
        self._headers_pending = True
        self._head_size = 0
        self._message_since = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        name = name.lower()
        request.headers.append((name, value))
        if name == b"content-length":
            request.content_length = value
        elif name == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        if self._broken:
            return  # the head was too large: answered 431 already
        if self._head_size + self._chunk_size > self._max_head and (
            len(self._url) + sum(len(name) + len(value) + 4 for name, value in request.headers) > self._max_head
        ):
            self._head_too_large()
            return
        self._headers_pending = False
        self._body_since = self._loop.time()
        parser = self._parser
        request.method = parser.get_method()
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        url = self._url
        try:
            if url[:1] == b"/" and b"?" not in url and b"#" not in url:
                raw_path, query = url, b""
            else:
                parsed = httptools.parse_url(url)
                raw_path, query = parsed.path or b"/", parsed.query or b""
            path = raw_path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            request.bad = True
        else:
            if "%" in path:
                path = unquote(path)
            request.path, request.raw_path, request.query = path, raw_path, query
            if request.method == b"POST":
                request.target = self._state.infer.target(path)
        if request.content_length is not None:
            request.refused = self._refusal(request.content_length)
        queue = self._queue
        self._enqueue(request)
        if len(queue) > 1:
            self._pause_reading()  # pipelined: it waits, and so does the rest of the input
        elif request.target is None or request.expect_continue or request.bad or request.refused:
            self._wake()
        # else an infer request: its task has nothing to do before the body is complete
        # (clients such as libcurl send the body in a second packet), so it is woken once,
        # by on_message_complete or on_body passing the limit.

    def _refusal(self, content_length: bytes) -> Exception | None:
        """Why a request declaring ``content_length`` is answered without reading its body
        (not a number, or over ``max_body_size``), else ``None``."""
        try:
            declared = int(content_length)
        except ValueError:
            return InvalidInputError("Content-Length is not an integer")
        if declared > self.max_body_size:
            return BodyTooLargeError(self.max_body_size)
        return None

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        assert request is not None
        if request.done or request.too_large or request.refused:
            return  # answered without its body, or past the limit: discard
        request.size += len(body)
        self._body_since = self._loop.time()
        if request.size > self.max_body_size:
            request.too_large = True
            request.chunks.clear()
            self._wake()
            return
        if request.target is None and request.size - request.taken > HIGH_WATER:
            self._pause_reading()  # the ASGI app is not keeping up: buffer no more
        request.chunks.append(body)
        if self._waiters:
            self._wake()

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.complete = True
        if self._waiters:
            self._wake()

    # ------------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Answer the connection's requests in order until it closes.

        Never raises: a failure is logged and closes this connection only, since the task
        group it lives in is the whole server's.
        """
        try:
            with anyio.CancelScope() as self._scope:
                await self._serve()
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            transport = self._transport
            if self._state.aborting:
                self.abort()
            elif not transport.is_closing():
                transport.close()  # connection_lost, once the output is flushed, ends it

    async def _serve(self) -> None:
        queue = self._queue
        while not self.closed:
            if not queue:
                if self._stopping and not (self._draining and (self._request_coming() or self._in_grace())):
                    return
                self._idle_since = self._loop.time()
                await self._wait()
                continue
            request = queue[0]
            if request.bad:
                if isinstance(request.refused, _HeadTooLargeError):
                    self._write_error(431, str(request.refused))
                else:
                    self._write_error(400, "malformed HTTP request")
                return
            if request.refused is not None:
                # The body is never read, so the connection ends here.
                self._write_reply(request, error_reply(request.refused, close=True))
                return
            if request.target is not None:
                await self._serve_infer(request, request.target)
            else:
                await self._serve_asgi(request)
            request.done = True
            queue.popleft()
            self._reused = True
            if self._stopping or not request.keep_alive or request.bad:
                return
            while self.write_paused and not self.closed:
                await self._wait()  # backpressure: no next answer before this one drains
            self._maybe_resume_reading()

    async def _serve_infer(self, request: Request, target: tuple[str, str]) -> None:
        infer = self._state.infer
        if not (request.complete or request.too_large):
            if request.expect_continue:
                self._transport.write(CONTINUE)
            while not (request.complete or request.too_large or request.bad or self.closed):
                await self._wait()
        if self.closed:
            return
        if request.bad:
            self._write_error(400, "malformed HTTP request body")
            return
        if request.too_large:
            self._write_reply(request, error_reply(BodyTooLargeError(self.max_body_size)))
            return
        chunks = request.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._in_infer = True
        try:
            reply = await infer.reply(target[0], target[1], request.headers, body)
        finally:
            self._in_infer = False
        self._write_reply(request, reply)

    def _write_reply(self, request: Request, reply: Reply) -> None:
        """Frame ``reply`` and send it in one write."""
        if self.closed:
            return
        head = [status_line(reply.status)]
        for name, value in reply.headers:
            head += (name, b": ", value, b"\r\n")
        body = reply.body
        head.append(b"content-length: %d\r\n" % len(body))
        if reply.close:
            self._stopping = True  # reply.headers carry "connection: close"
        elif self._stopping or not request.keep_alive:
            self._stopping = True
            head.append(b"connection: close\r\n")
        elif request.http_version == "1.0":
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        if len(body) < _LARGE:
            head.append(body)
            self._transport.write(b"".join(head))
        else:
            self._transport.writelines((b"".join(head), body))

    async def _serve_asgi(self, request: Request) -> None:
        exchange = Exchange(self, request)
        try:
            await self._state.app(exchange.scope(), exchange.receive, exchange.send)
        except Exception:
            log.exception("error in the ASGI application serving %s %s", request.method.decode(), request.path)
            if not exchange.head_sent:
                self._write_error(500, "internal server error")
            self._stopping = True
            return
        if not exchange.complete:
            if not exchange.head_sent and not self.closed:
                log.error("the ASGI application sent no response to %s %s", request.method.decode(), request.path)
                self._write_error(500, "internal server error")
            self._stopping = True  # a response cut short: the connection cannot be reused
        elif not exchange.keep_alive:
            self._stopping = True

    def _write_error(self, status: int, message: str) -> None:
        """A JSON error and close: for requests the handlers never saw."""
        self._stopping = True
        if not self.closed:
            self._transport.write(simple_response(status, message))

    # ------------------------------------------------------------- used by the bridge

    def write(self, data: bytes) -> None:
        """Send ``data`` unless the connection is gone."""
        if not self.closed:
            self._transport.write(data)

    def address(self, key: str) -> tuple[str, int] | None:
        """``peername``/``sockname`` as ASGI wants it: ``(host, port)``."""
        value = self._transport.get_extra_info(key)
        if isinstance(value, tuple) and len(value) >= 2:
            return str(value[0]), int(value[1])
        return None

    async def wait(self) -> None:
        """Until something happens on the connection (see :meth:`_wait`)."""
        await self._wait()

    def wake(self) -> None:
        """Wake whoever waits on the connection."""
        self._wake()

    def body_taken(self) -> None:
        """The handler consumed buffered body bytes: reading may go on."""
        self._maybe_resume_reading()

    # ---------------------------------------------------------------------- internals

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _enqueue(self, request: Request) -> None:
        self._queue.append(request)
        if not self._running:
            # The task starts with the first request, so connections that never send one
            # (probes, idle pools) cost no task.
            self._running = True
            self._state.spawn(self)

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if not self._read_paused or self._broken or self.closed or len(self._queue) > 1:
            return
        request = self._parsing
        if (
            request is None
            or request.complete
            or request.done
            or request.target is not None
            or request.size - request.taken <= HIGH_WATER
        ):
            self._read_paused = False
            self._transport.resume_reading()

    def _stop_reading(self) -> None:
        self._broken = True
        self._pause_reading()

    def _head_too_large(self) -> None:
        """Refuse the request whose head passed ``max_header_size``: read no further, and
        answer it 431 in its turn (then the connection closes)."""
        request = self._parsing
        if self._broken or request is None:
            return  # refused already
        self._stop_reading()
        self._headers_pending = False
        request.bad = True
        request.refused = _HeadTooLargeError(
            f"request head larger than {self._max_head} bytes"
        )
        self._enqueue(request)
        self._wake()

    def _malformed(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc, httptools.HttpParserCallbackError):
            log.error("HTTP parser callback failed", exc_info=exc)  # our bug, not the client's
        self._stop_reading()
        request = self._parsing
        if request is None or request.complete:
            request = Request()  # the error is before the next request's headers
        request.bad = True
        if request not in self._queue:
            self._enqueue(request)
        self._wake()

    # --------------------------------------------------------------- server lifecycle

    def shutdown(self) -> None:
        """Graceful stop: close now when idle, else after the response in progress (or
        to the request whose headers are arriving); every response from now on says
        ``connection: close``."""
        self._stopping = self._draining = True
        for request in self._queue:
            request.keep_alive = False
        if not self._queue and not self._request_coming() and not self._in_grace():
            self._transport.close()
        self._wake()

    def _in_grace(self) -> bool:
        """Idle, but used just before the stop: stays open for a request that may be coming
        (:meth:`_State.drain`)."""
        return self._state.in_grace(self._idle_since)

    def _request_coming(self) -> bool:
        """Whether a request has begun: its first bytes parsed, or waiting unread in the
        socket. A client may send on an idle keep-alive connection just as the server
        stops; closing it then would lose a request sent before the stop."""
        return self._headers_pending or _unread_bytes(self._transport) > 0

    def check_timeouts(self, now: float, limits: HttpLimits) -> None:
        """Close the connection if the client has stalled past one of ``limits``' timeouts:
        sending headers, sending a body the server waits for, reading a response, or idle
        between requests."""
        if self.closed:
            return
        transport = self._transport
        size = transport.get_write_buffer_size()
        if size == 0:
            self._write_stalled_since = None
        elif self._write_stalled_since is None or size < self._write_size:
            self._write_stalled_since = now  # output is moving (or resumed: see resume_writing)
        self._write_size = size
        if self._write_stalled_since is not None and now - self._write_stalled_since > limits.write_timeout:
            log.info("HTTP: dropping a client that read no response for %gs", limits.write_timeout)
            self.abort()
            return
        if transport.is_closing():
            return
        request = self._parsing
        if self._headers_pending and not self._read_paused:
            if now - self._message_since > limits.header_timeout:
                self._time_out(f"request headers not received within {limits.header_timeout:g}s", not self._queue)
        elif request is not None and not (request.complete or request.done or request.too_large or self._read_paused):
            if now - self._body_since > limits.body_timeout:
                waiting = bool(self._queue) and self._queue[0] is request and request.target is not None
                self._time_out(f"request body stalled for {limits.body_timeout:g}s", waiting)
        elif not self._queue:
            idle = limits.keep_alive_timeout
            if not self._reused:  # a new connection that sends nothing is idle too
                idle = min(idle, limits.header_timeout)
            if now - self._idle_since > idle:
                transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent output and all: a reset, not a FIN queued behind
        output the client may never read (which would leave the kernel holding it)."""
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self._transport.abort()

    def _time_out(self, message: str, answer: bool) -> None:
        """Close a connection whose client stalled; ``answer``: with a 408 first (only when
        no other response can be in progress on it)."""
        log.info("HTTP: closing a connection: %s", message)
        self._stop_reading()
        self._stopping = True
        if answer:
            self._transport.write(simple_response(408, message))
        self._transport.close()


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes received on the transport's socket that the event loop has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0


class _NoInfer:
    """An :class:`InferResponder` with no infer routes: every request goes to the ASGI app."""

    def target(self, path: str) -> tuple[str, str] | None:
        return None

    async def reply(self, model: str, version: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
        raise AssertionError("no infer routes")


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one). ``reuse_port``
    shares the port with the server's other worker processes (``SO_REUSEPORT``: the kernel
    spreads new connections over them).

    The socket is created with ``proto=IPPROTO_TCP``: asyncio sets TCP_NODELAY only on
    accepted sockets whose protocol says TCP (the connection sets it again to be sure).
    """
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_app(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    shutdown_timeout: float = 30,
    reuse_port: bool = False,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`serve_http11` for a plain ASGI app (no infer routes), e.g. ``/metrics``: it stops
    as soon as its requests are answered."""
    await serve_http11(app, _NoInfer(), host=host, port=port, shutdown_timeout=shutdown_timeout,
                       reuse_port=reuse_port, task_status=task_status)


async def serve_http11(
    app: ASGIApp,
    infer: InferResponder,
    *,
    host: str,
    port: int,
    shutdown_timeout: float = 30,
    limits: HttpLimits | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    keep_alive_timeout: float | None = None,
    ssl: ssl_module.SSLContext | None = None,
    reuse_port: bool = False,
    balance: Balance | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 on ``host:port`` until cancelled: infer routes by ``infer``, the rest by
    ``app``; over TLS when ``ssl`` is given (see :mod:`..tls`).

    The socket is bound first (:func:`bind`), so ``port=0`` works:
    ``task_status.started(port)`` reports the port bound. On cancellation it stops
    accepting, closes idle connections, lets requests in flight finish (for at most
    ``shutdown_timeout`` seconds, then aborts them), then the cancellation propagates.
    ``limits`` bounds request heads and slow clients (``keep_alive_timeout``, when given,
    overrides its keep-alive timeout); ``max_body_size`` bounds every request body, in bytes.
    ``balance`` (a worker of ``--workers N``) places each connection on the worker that
    serves the fewest (:mod:`..accept`).

    Raises:
        OSError: the address cannot be bound.
        ValueError: ``max_body_size`` is not positive.
    """
    limits = limits or HttpLimits()
    if max_body_size <= 0:
        raise ValueError(f"max_body_size must be positive, got {max_body_size}")
    if keep_alive_timeout is not None:
        limits = dataclasses.replace(limits, keep_alive_timeout=keep_alive_timeout)
    sock = bind(host, port, reuse_port=reuse_port)
    try:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            try:
                bound = await tg.start(
                    _serve, app, infer, sock, stop, shutdown_timeout, limits, max_body_size, ssl, balance,
                )
                task_status.started(bound)
                await anyio.sleep_forever()
            finally:
                stop.set()  # _serve, shielded, stops gracefully
    finally:
        sock.close()


async def _serve(
    app: ASGIApp,
    infer: InferResponder,
    sock: socket.socket,
    stop: anyio.Event,
    shutdown_timeout: float,
    limits: HttpLimits,
    max_body_size: int,
    ssl: ssl_module.SSLContext | None,
    balance: Balance | None,
    *,
    task_status: TaskStatus[int],
) -> None:
    # Shielded: cancelling serve_http11 must become a graceful stop, not cancel every
    # connection's task at once.
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            state = _State(app, infer, tg, limits, max_body_size)
            stop_listening = await listen(sock, state.protocol, ssl, tg, balance, "http", state)
            tg.start_soon(state.sweep)
            task_status.started(sock.getsockname()[1])
            try:
                await stop.wait()
            finally:
                with anyio.move_on_after(shutdown_timeout) as expired:
                    await stop_listening()
                    await state.drain()
                if expired.cancelled_caught:
                    log.warning("HTTP: %d connections still busy after %gs: aborting them",
                                len(state.connections), shutdown_timeout)
                state.aborting = True
                for connection in list(state.connections):
                    connection.abort()  # idle, flushing, or not started: their tasks cannot
                tg.cancel_scope.cancel()  # the idle sweep, and requests past the timeout
        # Closed and aborted transports close their sockets on a later loop turn; without this
        # wait an embedding program (or a test) that ends its loop right after this returns
        # leaves them open. Shielded: a stop is usually a cancellation, in which an unshielded
        # wait would end at once (it did: the late-GC ResourceWarning of an unclosed server-side
        # transport).
        with anyio.CancelScope(shield=True):
            await state.close_transports("HTTP")
