"""The trace extension on the wire, and the root span of a traced request.

``GET/POST /v2[/models/M]/trace/setting`` (HTTP) and ``TraceSetting`` (gRPC) read and change
:class:`~dagserve.tracing.Tracing`'s settings; the two wire forms of a change are turned into
one (:func:`http_changes`, :func:`grpc_changes`). :func:`request_trace` starts the trace of a
sampled inference request and makes it the parent of the engine's spans; the frontends call
it only while ``server.tracing.enabled``, so tracing that is off costs one attribute read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ..tracing import CURRENT, Span

if TYPE_CHECKING:
    from ..engine import Server

__all__ = ["grpc_changes", "header_lookup", "http_changes", "request_trace", "trace_setting"]


def http_changes(body: Mapping[str, Any]) -> dict[str, list[str] | None]:
    """The changes a ``POST …/trace/setting`` JSON body asks for: ``null`` clears a setting, a
    string (or a number) sets it, an array sets ``trace_level``'s levels (an empty array
    changes nothing, as on Triton).

    Raises:
        InvalidInputError: a value of another JSON type, naming the setting.
    """
    changes: dict[str, list[str] | None] = {}
    for name, value in body.items():
        if value is None:
            changes[name] = None
        elif isinstance(value, str):
            changes[name] = [value]
        elif isinstance(value, int) and not isinstance(value, bool):
            changes[name] = [str(value)]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            if value:
                changes[name] = list(value)
        else:
            raise InvalidInputError(
                f"trace setting '{name}' must be a string, an array of strings or null, got {value!r}"
            )
    return changes


def grpc_changes(settings: Mapping[str, Any]) -> dict[str, list[str] | None]:
    """The changes of a ``TraceSettingRequest``: a setting with no value is cleared."""
    return {name: list(setting.value) or None for name, setting in settings.items()}


def trace_setting(server: Server, model: str, changes: Mapping[str, list[str] | None] | None) -> dict[str, Any]:
    """Apply ``changes`` (if any) to ``model``'s trace setting ("" = global) and return the
    settings in force there.

    Raises:
        InvalidInputError: ``model`` is not a ready model (Triton's message), or a bad change.
        UnsupportedError: a change of ``trace_file``.
    """
    if model:
        try:
            ready = server.model_ready(model)
        except Exception:  # noqa: BLE001 - unknown or malformed: Triton answers the same
            ready = False
        if not ready:
            raise InvalidInputError(f"Request for unknown model : {model}")
    if changes:
        return server.tracing.update(model, changes)
    return server.tracing.settings(model)


def header_lookup(pairs: Iterable[tuple[Any, Any]]) -> Any:
    """A reader of request headers (bytes, lower-case names) or gRPC metadata (str) by name."""
    items = list(pairs)

    def lookup(name: str) -> str | None:
        for key, value in items:
            key = key.decode("latin-1") if isinstance(key, bytes) else key
            if key.lower() == name:
                return value.decode("latin-1") if isinstance(value, bytes) else str(value)
        return None

    return lookup


@contextlib.contextmanager
def request_trace(server: Server, model: str, protocol: str, headers: Iterable[tuple[Any, Any]]) -> Iterator[Span | None]:
    """Sample one inference request to ``model``; while the block runs, its root span (if
    sampled) is the parent of the engine's spans. The span ends with the block, with its
    error if the block raises."""
    root = server.tracing.start(model, protocol, header_lookup(headers))
    if root is None:
        yield None
        return
    token = CURRENT.set(root)
    try:
        yield root
    except BaseException as exc:
        root.end(exc)
        raise
    else:
        root.end()
    finally:
        CURRENT.reset(token)
