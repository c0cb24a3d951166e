"""The one error tree of dagserve.

Every failure a client can cause or see is a :class:`DagserveError` subclass named by the
condition, never by a transport code. The frontends own the single table that maps each class
to an HTTP status and a gRPC code (``dagserve.frontends.status``).

The tree::

    DagserveError
      InvalidInputError          the request is malformed or does not fit the model
      ModelNotFoundError         no such model or version
      ModelNotReadyError         loading, unloading or failed
        WorkerCrashedError       a process-isolated model's worker died
      OverloadedError            a queue is full, or the server is stopping
      RequestTimeoutError        the request's deadline passed
      RequestCancelledError      the client cancelled the request
      UnsupportedError           a feature this server does not have
      AlreadyExistsError         the name is taken
        RegionExistsError        a shared-memory region of that name is registered
      RegionNotFoundError        no shared-memory region of that name is registered
      ConfigError                a model or pipeline configuration is invalid
      ModelExecutionError        the model's own code failed
      InternalError              a bug in dagserve

``TimeoutError`` and ``CancelledError`` are deprecated aliases of the ``Request*`` names (they
shadowed the builtin ``TimeoutError`` and read like ``asyncio.CancelledError``).
"""

from __future__ import annotations

from ._deprecation import renamed

__all__ = [
    "AlreadyExistsError",
    "ConfigError",
    "DagserveError",
    "InternalError",
    "InvalidInputError",
    "ModelExecutionError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "OverloadedError",
    "RegionExistsError",
    "RegionNotFoundError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "UnsupportedError",
    "WorkerCrashedError",
]


class DagserveError(Exception):
    """Base of every error dagserve reports to a client.

    ``str(error)`` is the message the client sees, so it names the problem (model, tensor,
    field) and carries no traceback.
    """


class InvalidInputError(DagserveError):
    """The request is malformed or does not match the model's inputs."""


class ModelNotFoundError(DagserveError):
    """No model (or no such version of it) is in the repository."""


class ModelNotReadyError(DagserveError):
    """The model exists but is not ready (loading, unloading or failed)."""


class WorkerCrashedError(ModelNotReadyError):
    """The worker process of a process-isolated model died (or is being restarted after it
    died); the message names the model and how the process ended. Retry later."""


class OverloadedError(DagserveError):
    """The request was refused because a queue is full or the server is shutting down."""


class RequestTimeoutError(DagserveError):
    """The request did not complete within its deadline."""


class RequestCancelledError(DagserveError):
    """The request was cancelled by its client."""


class UnsupportedError(DagserveError):
    """The request asks for something this server does not support."""


class AlreadyExistsError(DagserveError):
    """Something with that name already exists."""


class RegionExistsError(AlreadyExistsError):
    """A shared-memory region of that name is already registered (Triton's extension)."""


class RegionNotFoundError(DagserveError):
    """No shared-memory region of that name is registered (Triton's extension)."""


class ConfigError(DagserveError):
    """A model or pipeline configuration is invalid.

    The message names the file and the field at fault.
    """


class ModelExecutionError(DagserveError):
    """A model's own code reported an error for a request (its message is shown as is)."""


class InternalError(DagserveError):
    """An unexpected failure; the client sees a generic message and the log has the details."""


__getattr__ = renamed(__name__, {"TimeoutError": RequestTimeoutError, "CancelledError": RequestCancelledError})
