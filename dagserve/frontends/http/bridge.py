"""Requests as dagserve's HTTP/1.1 server (:mod:`.server`) parses them, and the bridge
that runs an ASGI app on one.

The bridge is the part of an ASGI server the starlette routes need: a scope, ``receive``
yielding the body as it arrives (then ``http.disconnect`` once the response is complete or the
client is gone), and ``send`` framing the response. A response sent in one body message gets a
``Content-Length`` and goes out in one write with its head; a streamed one without a length
is chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0).
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.types import Message, Scope

from ..http_codec import BodyTooLargeError
from .replies import status_line

__all__ = ["CONTINUE", "HIGH_WATER", "Connection", "Exchange", "Request"]

HIGH_WATER = 65536
"""Bytes of request body buffered for an ASGI app before reading pauses."""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

class Request:
    """One request message, filled in by the parser callbacks as its bytes arrive.

    ``chunks`` holds body bytes not yet handed over; ``size`` counts all body bytes received,
    ``taken`` those handed over. ``target`` is ``(model, version)`` for the infer routes.
    ``refused`` is why the server answers the request without reading its body (a
    ``Content-Length`` over the limit or not a number).
    """

    __slots__ = (
        "bad", "chunks", "complete", "content_length", "done", "expect_continue", "headers",
        "http_version", "keep_alive", "method", "path", "query", "raw_path", "refused", "size", "taken",
        "target", "too_large",
    )

    def __init__(self) -> None:
        self.method = b""
        self.http_version = "1.1"
        self.keep_alive = False
        self.path = ""
        self.raw_path = b""
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: bytes | None = None
        self.expect_continue = False
        self.target: tuple[str, str] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.taken = 0
        self.complete = False  # the whole message has been parsed
        self.too_large = False  # a body past the limit; its bytes are discarded
        self.refused: Exception | None = None
        self.bad = False  # unparseable: answered 400, then the connection closes
        self.done = False  # answered; body bytes still arriving are discarded


class Connection(Protocol):
    """What an :class:`Exchange` needs of the connection it runs on."""

    closed: bool
    write_paused: bool
    max_body_size: int

    @property
    def stopping(self) -> bool:
        """Whether the connection closes after this response (a graceful shutdown)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` unless the connection is gone."""

    async def wait(self) -> None:
        """Until something happens on the connection: body bytes, drained writes, its end."""

    def wake(self) -> None:
        """Wake whoever waits."""

    def body_taken(self) -> None:
        """Buffered body bytes were handed over: reading may resume."""

    def address(self, key: str) -> tuple[str, int] | None:
        """``peername`` or ``sockname`` as ``(host, port)``."""


class Exchange:
    """One request's ASGI scope, ``receive`` and ``send`` on a :class:`Connection`.

    After the app returns, ``head_sent``, ``complete`` and ``keep_alive`` tell the server
    whether a response went out whole and whether the connection may carry another.

    ``send`` raises ``RuntimeError`` for messages out of order and for a body that
    disagrees with its ``Content-Length``, as uvicorn does; after the client has gone it
    returns without sending.
    """

    __slots__ = (
        "_chunked", "_conn", "_delivered", "_has_body", "_head", "_remaining", "_request",
        "complete", "head_sent", "keep_alive",
    )

    def __init__(self, conn: Connection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._head: list[bytes] | None = None  # built by http.response.start, sent with the body
        self._has_body = True
        self._chunked = False
        self._remaining: int | None = None  # bytes still owed to a declared Content-Length
        self._delivered = False  # the last body message went to the app
        self.head_sent = False
        self.complete = False
        self.keep_alive = request.keep_alive

    def scope(self) -> Scope:
        """The ASGI HTTP connection scope of the request."""
        request, conn = self._request, self._conn
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": conn.address("peername"),
            "server": conn.address("sockname"),
            "state": {},
        }

    async def receive(self) -> Message:
        """The body as it arrives; then, once the response is complete or the client has
        gone, ``http.disconnect`` (until then it waits).

        Raises:
            BodyTooLargeError: the body passed the server's limit (its bytes are discarded).
        """
        request, conn = self._request, self._conn
        if request.expect_continue and not request.complete and not conn.closed:
            request.expect_continue = False
            conn.write(CONTINUE)
        while True:
            if conn.closed or self.complete or request.bad:
                return {"type": "http.disconnect"}
            if request.too_large:
                raise BodyTooLargeError(conn.max_body_size)
            chunks = request.chunks
            if chunks or (request.complete and not self._delivered):
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                request.taken = request.size
                more = not request.complete
                self._delivered = not more
                conn.body_taken()
                return {"type": "http.request", "body": body, "more_body": more}
            await conn.wait()

    async def send(self, message: Message) -> None:
        """Frame and send one ASGI response message."""
        kind = message["type"]
        if kind == "http.response.start":
            if self._head is not None or self.head_sent:
                raise RuntimeError("ASGI response started twice")
            self._start(message["status"], message.get("headers", ()))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if self._head is None and not self.head_sent:
            raise RuntimeError("ASGI response body before http.response.start")
        if self.complete:
            raise RuntimeError("ASGI response body after the response was complete")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = self._conn
        while conn.write_paused and not conn.closed:
            await conn.wait()  # backpressure: the client reads slower than the app writes
        parts = self._head_for(len(body), more) if self._head is not None else []
        if body and self._has_body:
            if self._chunked:
                parts += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                if self._remaining is not None:
                    self._remaining -= len(body)
                    if self._remaining < 0:
                        raise RuntimeError("ASGI response body longer than its Content-Length")
                parts.append(body)
        if not more:
            if self._chunked and self._has_body:
                parts.append(b"0\r\n\r\n")
            self.complete = True
        if parts:
            conn.write(b"".join(parts))
        if not more:
            conn.wake()  # a receive() waiting for the end now returns http.disconnect
            if self._remaining and self._has_body:
                raise RuntimeError("ASGI response body shorter than its Content-Length")

    def _start(self, status: int, headers: Any) -> None:
        head = [status_line(status)]
        for name, value in headers:
            name = bytes(name).lower()
            value = bytes(value)
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
                raise RuntimeError(f"invalid HTTP header {name!r}: {value!r}")
            if name == b"content-length":
                self._remaining = int(value)
            elif name == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue  # added back below, once
            head += (name, b": ", value, b"\r\n")
        self._has_body = self._request.method != b"HEAD" and status >= 200 and status not in (204, 304)
        self._head = head

    def _head_for(self, size: int, more: bool) -> list[bytes]:
        """The head, completed with framing once the first body message shows its kind."""
        head = self._head
        assert head is not None
        self._head = None
        self.head_sent = True
        if self._has_body and self._remaining is None and not self._chunked:
            if not more:
                self._remaining = size
                head.append(b"content-length: %d\r\n" % size)
            elif self._request.http_version == "1.1":
                self._chunked = True
                head.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the body ends where the connection does
        if self._conn.stopping:
            self.keep_alive = False  # the server is draining: this is the connection's last answer
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        elif self._request.http_version == "1.0":
            head.append(b"connection: keep-alive\r\n")
        head.append(b"\r\n")
        return head
