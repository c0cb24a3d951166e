"""The one table mapping dagserve errors to HTTP statuses and gRPC codes.

Both frontends look an exception up here by class (most specific first, as starlette looks up
exception handlers), so a new error class needs one row and no frontend change.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import grpc

from .. import errors

__all__ = ["Status", "status_for"]

log = logging.getLogger("dagserve.frontends")


@dataclass(frozen=True, slots=True)
class Status:
    """How one error reaches a client: HTTP status, gRPC code and the message to show."""

    http: int
    grpc: grpc.StatusCode
    message: str


_TABLE: tuple[tuple[type[BaseException], int, grpc.StatusCode], ...] = (
    (errors.ModelNotFoundError, 404, grpc.StatusCode.NOT_FOUND),
    (errors.RegionNotFoundError, 404, grpc.StatusCode.NOT_FOUND),
    # Triton answers a region registered twice with 400 over HTTP (every code it has no
    # HTTP status for is 400) and ALREADY_EXISTS over gRPC; clients see the same here.
    (errors.RegionExistsError, 400, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidInputError, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ConfigError, 400, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotReadyError, 503, grpc.StatusCode.UNAVAILABLE),
    (errors.OverloadedError, 503, grpc.StatusCode.UNAVAILABLE),
    (errors.RequestTimeoutError, 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.RequestCancelledError, 499, grpc.StatusCode.CANCELLED),
    (errors.UnsupportedError, 501, grpc.StatusCode.UNIMPLEMENTED),
    (errors.AlreadyExistsError, 409, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ModelExecutionError, 500, grpc.StatusCode.INTERNAL),
    (errors.InternalError, 500, grpc.StatusCode.INTERNAL),
)


def status_for(exc: BaseException, *, request_id: str = "") -> Status:
    """The status and client-facing message for ``exc``.

    A :class:`~dagserve.errors.DagserveError` keeps its own message. Anything else is a bug:
    it is logged with its traceback and the client gets a generic message with an error id
    to quote, never the exception text.
    """
    for cls, http, code in _TABLE:
        if isinstance(exc, cls):
            return Status(http, code, str(exc))
    if isinstance(exc, errors.DagserveError):
        return Status(400, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s (request id %r)", error_id, request_id, exc_info=exc)
    return Status(500, grpc.StatusCode.INTERNAL, f"internal server error (error id {error_id})")
