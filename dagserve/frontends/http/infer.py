"""The ``/infer`` route without a transport: decode, ``Server.infer``, encode.

:class:`InferCore` is the one implementation of ``POST /v2/models/{m}[/versions/{v}]/infer``:
dagserve's own HTTP/1.1 server (:mod:`.http_server`) calls it directly and the ASGI app
(:mod:`.http`) wraps it. Each transport reads the body (bounded by :attr:`InferCore.limit`)
and frames the :class:`InferReply`; everything between, every error mapped to its status
included, happens here.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import TYPE_CHECKING, NamedTuple

from ..errors import InvalidInputError
from .http_codec import (
    BodyTooLargeError,
    decode_infer_request,
    decode_raw_request,
    decompress_body,
    encode_infer_response,
)
from .restricted import Restrictions, http_forbidden
from .status import status_for

if TYPE_CHECKING:
    from ..engine import Server

__all__ = ["InferCore", "InferReply"]

_INFER_HEADER = b"inference-header-content-length"
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
# Below this size compressing a response costs more than it saves (starlette's GZip default).
_MIN_COMPRESS = 500
_EMPTY = memoryview(b"")


class InferReply(NamedTuple):
    """One ``/infer`` answer, ready for any transport to frame.

    ``headers`` are lower-case and exclude ``content-length`` (the transport frames the body);
    ``close`` asks the transport to close the connection after sending it.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    close: bool = False


def _error_reply(status: int, message: str, *, close: bool = False) -> InferReply:
    """``{"error": message}``; with ``close``, a ``connection: close`` header too."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", _JSON)]
    if close:
        headers.append((b"connection", b"close"))
    return InferReply(status, headers, body, close)


class InferCore:
    """``POST /v2/models/{model}[/versions/{version}]/infer``: decode, infer, encode.

    Transport-free, so dagserve's own HTTP/1.1 server (:mod:`.http_server`) and the ASGI
    endpoint share one implementation; each transport reads the body (bounded by
    :attr:`limit`) and frames the :class:`InferReply`.
    """

    __slots__ = ("_restricted", "_server", "limit")

    def __init__(self, server: Server, max_body_size: int, restricted: Restrictions | None = None) -> None:
        self._server = server
        self._restricted = restricted or None  # security: inference behind a header
        self.limit = max_body_size
        """Largest request body accepted, in bytes, as sent and once decompressed."""

    @staticmethod
    def target(path: str) -> tuple[str, str] | None:
        """``(model, version)`` when ``path`` is an infer route (version ``""``: newest), else
        ``None``. Cheaper than a regex router on the one route whose cost matters."""
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path[11:-6].split("/")
            if len(parts) == 1 and parts[0]:
                return parts[0], ""
            if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                return parts[0], parts[2]
        return None

    def declared_size(self, content_length: bytes | None) -> int | None:
        """The body size ``Content-Length`` declares (``None`` when absent, e.g. chunked).

        Raises:
            InvalidInputError: not an integer (answer it with :meth:`error`, ``close=True``).
            BodyTooLargeError: over :attr:`limit`, so the body need not be read.
        """
        if content_length is None:
            return None
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidInputError("Content-Length is not an integer") from None
        if declared > self.limit:
            raise BodyTooLargeError(self.limit)
        return declared

    @staticmethod
    def error(exc: Exception, *, request_id: str = "", close: bool = False) -> InferReply:
        """The ``{"error": ...}`` reply for ``exc``: 413 and close for an over-limit body,
        else the status :func:`status_for` gives (closing the connection with ``close``)."""
        if isinstance(exc, BodyTooLargeError):
            # Closing the connection is what stops the client sending the rest of the body.
            return _error_reply(413, str(exc), close=True)
        status = status_for(exc, request_id=request_id)
        return _error_reply(status.http, status.message, close=close)

    async def reply(
        self, model: str, version: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> InferReply:
        """Serve one infer request whose whole ``body`` has been read; ``headers`` are the
        request's, names lower-case.

        Every error becomes an error reply (never raised). On cancellation the engine call
        is cancelled (out of its queue, or its pipeline) and ``CancelledError`` propagates.
        """
        if self._restricted is not None:
            denied = self._restricted.denied_http("inference", headers)
            if denied is not None:
                status, message = http_forbidden(denied)
                return InferReply(status, [(b"content-type", _JSON)], message, False)
        content_encoding: bytes | None = None
        header_length: bytes | None = None
        accept_encoding: bytes | None = None
        for key, value in headers:
            if key == _INFER_HEADER:
                header_length = value
            elif key == b"content-encoding":
                content_encoding = value
            elif key == b"accept-encoding":
                accept_encoding = value
        request_id = ""
        try:
            if content_encoding is not None:
                body = decompress_body(body, content_encoding.decode("latin-1"), self.limit)
            if header_length is None:
                request = decode_infer_request(body, _EMPTY, self._server.options.limits)
            else:
                json_size = _parse_header_length(header_length, len(body))
                view = memoryview(body)
                if json_size == 0:
                    request = decode_raw_request(
                        view, self._server.model_metadata(model, version), self._server.options.limits
                    )
                else:
                    # json.loads wants bytes: the header is copied, the tensor bytes are not.
                    request = decode_infer_request(body[:json_size], view[json_size:], self._server.options.limits)
            request_id = request.id
            response = await self._server.infer(model, version, request)
            out, json_size_out = encode_infer_response(response, request)
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes a status
            return self.error(exc, request_id=request_id)

        reply_headers = [(b"content-type", _JSON if json_size_out is None else _OCTETS)]
        if json_size_out is not None:
            reply_headers.append((_INFER_HEADER, str(json_size_out).encode()))
        if accept_encoding is not None and len(out) >= _MIN_COMPRESS:
            encoding = _accepted_encoding(accept_encoding)
            if encoding == b"gzip":
                out = gzip.compress(out, compresslevel=6)
                reply_headers.append((b"content-encoding", encoding))
            elif encoding == b"deflate":
                out = zlib.compress(out, 6)
                reply_headers.append((b"content-encoding", encoding))
        return InferReply(200, reply_headers, out)


def _accepted_encoding(value: bytes) -> bytes | None:
    """``b"gzip"`` or ``b"deflate"`` when ``Accept-Encoding`` allows one, else ``None``."""
    found: list[bytes] = []
    for item in value.lower().split(b","):
        token, _, params = item.strip().partition(b";")
        if params.replace(b" ", b"") in (b"q=0", b"q=0.0", b"q=0.00", b"q=0.000"):
            continue
        found.append(token.strip())
    for choice in (b"gzip", b"deflate"):
        if choice in found:
            return choice
    return None


def _parse_header_length(value: bytes, body_size: int) -> int:
    try:
        size = int(value)
    except ValueError:
        raise InvalidInputError(
            f"Inference-Header-Content-Length {value.decode('latin-1')!r} is not an integer"
        ) from None
    if size < 0 or size > body_size:
        raise InvalidInputError(
            f"Inference-Header-Content-Length {size} does not fit a request body of {body_size} bytes"
        )
    return size
