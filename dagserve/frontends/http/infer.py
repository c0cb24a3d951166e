"""``POST /v2/models/{m}[/versions/{v}]/infer``: decode, ``Server.infer``, encode.

:class:`InferCore` is the one implementation of the infer route. The server (:mod:`.server`)
reads the body, bounded by its limit, and calls :meth:`InferCore.reply` directly, no ASGI in
between; it frames the :class:`~.replies.Reply`. Everything between, every error mapped to
its status included, happens here.
"""

from __future__ import annotations

import gzip
import zlib
from typing import TYPE_CHECKING

from ...errors import InvalidInputError
from ...shared_memory import SharedMemoryRegistry
from ..http_codec import decode_infer_request, decode_raw_request, decompress_body, encode_infer_response
from ..restricted import Restrictions, http_forbidden
from ..tracing import request_trace
from .replies import JSON, Reply, error_reply

if TYPE_CHECKING:
    from ...engine import Server

__all__ = ["InferCore"]

_INFER_HEADER = b"inference-header-content-length"
_OCTETS = b"application/octet-stream"
# Below this size compressing a response costs more than it saves (starlette's GZip default).
_MIN_COMPRESS = 500
_EMPTY = memoryview(b"")


class InferCore:
    """``POST /v2/models/{model}[/versions/{version}]/infer``: decode, infer, encode.

    The server reads the body (bounded by its limit) and frames the :class:`~.replies.Reply`.
    """

    __slots__ = ("_restricted", "_server", "_shared_memory", "limit")

    def __init__(
        self,
        server: Server,
        max_body_size: int,
        restricted: Restrictions | None = None,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        self._server = server
        self._restricted = restricted or None  # security: inference behind a header
        self._shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self.limit = max_body_size
        """Largest request body accepted once decompressed, in bytes (the server bounds it
        as sent)."""

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

    async def reply(
        self, model: str, version: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Reply:
        """Serve one infer request whose whole ``body`` has been read; ``headers`` are the
        request's, names lower-case.

        Every error becomes an error reply (never raised). On cancellation the engine call
        is cancelled (out of its queue, or its pipeline) and ``CancelledError`` propagates.
        """
        if self._restricted is not None:
            denied = self._restricted.denied_http("inference", headers)
            if denied is not None:
                status, message = http_forbidden(denied)
                return Reply(status, [(b"content-type", JSON)], message, False)
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
            shm = self._shared_memory
            if header_length is None:
                request = decode_infer_request(body, _EMPTY, self._server.options.limits, shm)
            else:
                json_size = _parse_header_length(header_length, len(body))
                view = memoryview(body)
                if json_size == 0:
                    request = decode_raw_request(
                        view, self._server.model_metadata(model, version), self._server.options.limits
                    )
                else:
                    # json.loads wants bytes: the header is copied, the tensor bytes are not.
                    request = decode_infer_request(
                        body[:json_size], view[json_size:], self._server.options.limits, shm
                    )
            request_id = request.id
            targets = shm.output_targets(request.outputs)
            if self._server.tracing.enabled:
                with request_trace(self._server, model, "http", headers):
                    response = await self._server.infer(model, version, request)
            else:
                response = await self._server.infer(model, version, request)
            if targets:
                shm.write_outputs(response, targets)
            out, json_size_out = encode_infer_response(response, request, targets)
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes a status
            return error_reply(exc, request_id=request_id)

        reply_headers = [(b"content-type", JSON if json_size_out is None else _OCTETS)]
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
        return Reply(200, reply_headers, out)


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
