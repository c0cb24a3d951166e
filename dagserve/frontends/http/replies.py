"""Replies and error framing: the one place an HTTP error gets its status and body.

Every error the HTTP frontend answers, from any route or from the server itself (a malformed
request, a head or body over its limit, a stalled client, too many connections), has the
protocol's ``{"error": "<message>"}`` JSON body. :func:`error_reply` maps an exception to its
reply (the status from :func:`~dagserve.frontends.status.status_for`; an over-limit body is
413 and closes the connection, since closing is what stops the client sending the rest), and
:func:`simple_response` frames an error the server answers before any handler runs.
"""

from __future__ import annotations

import http
import json
from typing import NamedTuple

from ..http_codec import BodyTooLargeError
from ..status import status_for

__all__ = ["JSON", "Reply", "error_reply", "json_error", "simple_response", "status_line"]

JSON = b"application/json"

_STATUS_LINES: dict[int, bytes] = {}


class Reply(NamedTuple):
    """One answer, ready for the server to frame.

    ``headers`` are lower-case and exclude ``content-length`` (the server frames the body);
    ``close`` asks the server to close the connection after sending it (``headers`` then
    carry ``connection: close``).
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    close: bool = False


def json_error(status: int, message: str, *, close: bool = False) -> Reply:
    """``{"error": message}`` with ``status``; with ``close``, ``connection: close`` too."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", JSON)]
    if close:
        headers.append((b"connection", b"close"))
    return Reply(status, headers, body, close)


def error_reply(exc: BaseException, *, request_id: str = "", close: bool = False) -> Reply:
    """The reply for ``exc``: 413 and close for an over-limit body, else the status
    :func:`status_for` gives (closing the connection with ``close``)."""
    if isinstance(exc, BodyTooLargeError):
        return json_error(413, str(exc), close=True)
    status = status_for(exc, request_id=request_id)
    return json_error(status.http, status.message, close=close)


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
    return line


def simple_response(status: int, message: str) -> bytes:
    """A complete ``{"error": message}`` response that closes the connection, for what the
    server answers itself."""
    reply = json_error(status, message, close=True)
    head = [status_line(status)]
    for name, value in reply.headers:
        head += (name, b": ", value, b"\r\n")
    head.append(b"content-length: %d\r\n\r\n" % len(reply.body))
    return b"".join((*head, reply.body))
