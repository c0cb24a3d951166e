"""The trace settings at run time, with Triton's semantics, and the sampling of requests.

:class:`Tracing` holds the global setting and any per-model ones (Triton's trace extension,
``/v2[/models/M]/trace/setting``). A model setting keeps only the fields it was given and
takes every other from the global one, also after the global one changes; clearing a field
(``null`` over HTTP, an empty value list over gRPC) gives it back to the global setting (or,
for a global field, to the start-up value), and a model setting left with no field of its own
is removed. Each update replaces the setting, so its sampling starts afresh, as on Triton.

Sampling (:meth:`Tracing.start`): one request in ``trace_rate`` of those to a model is
traced while ``trace_count`` (the traces left, -1 for no limit, shown as it counts down) is
not 0. In ``opentelemetry`` mode a request that carries a W3C ``traceparent`` is always traced
(while the level is not ``OFF``), whatever the rate and count: ``rate=0`` traces only those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidInputError, UnsupportedError
from .config import LEVELS, TraceConfig, check_range
from .context import Span

__all__ = ["Tracing"]

log = logging.getLogger("dagserve.tracing")

SettingsJSON = dict[str, "str | list[str]"]
Lookup = Callable[[str], "str | None"]
"""Reads a request header (gRPC metadata) by its lower-case name."""

_FIELDS = ("trace_level", "trace_rate", "trace_count", "log_frequency")
_RANGES = {"trace_rate": (0, 2**32 - 1), "trace_count": (-1, 2**31 - 1), "log_frequency": (0, 2**32 - 1)}
_READ_ONLY = (
    "trace_mode", "url", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size",
)


@dataclass(frozen=True, slots=True)
class _Values:
    level: tuple[str, ...]
    rate: int
    count: int
    log_frequency: int


class _Setting:
    """One scope's effective setting and its sampling state (replaced on every update)."""

    __slots__ = ("count", "file", "level", "log_frequency", "rate", "seen", "specified", "timestamps", "valid_reason")

    def __init__(self, values: _Values, specified: Mapping[str, Any], file: str, mode: str) -> None:
        self.level = values.level
        self.rate = values.rate
        self.count = values.count
        self.log_frequency = values.log_frequency
        self.specified = dict(specified)  # field -> value given for this scope
        self.file = file
        self.timestamps = "TIMESTAMPS" in self.level
        self.seen = 0
        if not self.level:
            self.valid_reason = "tracing is disabled"
        elif self.rate == 0:
            self.valid_reason = "sample rate must be non-zero"
        elif mode == "triton" and not file:
            self.valid_reason = "trace file name is not given"
        else:
            self.valid_reason = ""

    def sample(self, forced: bool) -> bool:
        """Whether this request is traced (Triton's ``TraceSetting::SampleTrace``)."""
        hit = False
        if self.rate:
            if (self.valid_reason or self.count == 0) and not forced:
                return False
            self.seen += 1
            hit = self.seen % self.rate == 0
            if hit and self.count > 0:
                self.count -= 1
            elif hit and self.count == 0:
                hit = False
        return hit or forced

    def as_json(self, config: TraceConfig) -> SettingsJSON:
        """Triton's trace setting response for this scope."""
        out: SettingsJSON = {
            "trace_level": list(self.level) or ["OFF"],
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
        }
        if config.mode == "triton":
            out["log_frequency"] = str(self.log_frequency)
            out["trace_file"] = self.file
        out["trace_mode"] = config.mode
        if config.mode == "opentelemetry":
            out["url"] = config.url
            out["bsp_max_queue_size"] = str(config.bsp_max_queue_size)
            out["bsp_schedule_delay"] = str(config.bsp_schedule_delay)
            out["bsp_max_export_batch_size"] = str(config.bsp_max_export_batch_size)
        return out


class Tracing:
    """The trace settings of one server and the exporter behind them.

    ``enabled`` is false while every setting's level is ``OFF``: the frontends then skip
    tracing entirely (one attribute read per request). :meth:`open` starts the exporter,
    :meth:`close` flushes and stops it.
    """

    def __init__(self, config: TraceConfig | None = None) -> None:
        self.config = config or TraceConfig()
        self._default = _Values(self.config.level, self.config.rate, self.config.count, self.config.log_frequency)
        self._global = self._make(self._default, {})
        self._models: dict[str, _Setting] = {}
        self._exporter: Any = None
        self.enabled = bool(self._global.level)

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        """Start the exporter of the configured mode (nothing when ``triton`` mode has no file
        and tracing is off... the file backend costs nothing until a trace ends).

        Raises:
            ConfigError: ``opentelemetry`` mode without the OpenTelemetry SDK installed (the
                message says ``pip install dagserve[otel]``), or an unusable setting.
        """
        if self._exporter is not None:
            return
        if self.config.mode == "opentelemetry":
            from .otel import OtelExporter

            self._exporter = OtelExporter(self.config)
        else:
            from .triton_file import TritonFileExporter

            self._exporter = TritonFileExporter()

    def close(self) -> None:
        """Export what is pending (spans, trace files) and stop the exporter (blocking: call
        it from a worker thread in a running server)."""
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            exporter.close()

    def flush(self) -> None:
        """Export the spans ended so far now (``opentelemetry`` mode; blocking)."""
        if self._exporter is not None:
            self._exporter.flush()

    # -- the trace extension ------------------------------------------------------------------
    def settings(self, model: str = "") -> SettingsJSON:
        """The settings in force for ``model`` ("" = the global ones), as Triton answers
        ``GET /v2[/models/M]/trace/setting``."""
        return self._scope(model).as_json(self.config)

    def update(self, model: str, changes: Mapping[str, list[str] | None]) -> SettingsJSON:
        """Apply ``changes`` to ``model``'s setting ("" = the global one) and return the
        settings now in force there. Each change is a setting name and its values (strings,
        as on the wire; several only for ``trace_level``), or ``None`` to clear it.

        Raises:
            UnsupportedError: ``trace_file`` (as on Triton, it is set only at start-up).
            InvalidInputError: an unknown or read-only setting, a value that does not parse
                or is out of range, or a result that could not trace (a level on, with rate 0,
                or in ``triton`` mode with no trace file), naming the setting and the value.
        """
        given = _parse(changes)
        current = self._models.get(model) if model else self._global
        specified = dict(current.specified) if current is not None else {}
        for name, value in given.items():
            if value is None:
                specified.pop(name, None)
            else:
                specified[name] = value
        base = self._global_values() if model else self._default
        candidate = self._make(base, specified)
        if candidate.valid_reason and candidate.level:
            raise InvalidInputError(f"Attempting to set invalid trace setting: {candidate.valid_reason}")
        replaced = [current] if current is not None else []
        if not model:
            self._global = candidate
            for name, setting in list(self._models.items()):  # they follow the global fields
                replaced.append(setting)
                self._models[name] = self._make(self._global_values(), setting.specified)
        elif specified:
            self._models[model] = candidate
        else:
            self._models.pop(model, None)
        if self._exporter is not None:
            for setting in replaced:  # a trace in flight may still end under it: Triton's way too
                self._exporter.retire(setting)
        self.enabled = bool(self._global.level) or any(s.level for s in self._models.values())
        return self.settings(model)

    # -- sampling -----------------------------------------------------------------------------
    def start(self, model: str, protocol: str, headers: Lookup | None = None) -> Span | None:
        """The root span of a new trace when a request to ``model`` is sampled, else ``None``.
        ``headers`` reads the request's headers (gRPC metadata), for the W3C trace context."""
        setting = self._models.get(model, self._global) if self._models else self._global
        if not setting.level or self._exporter is None:
            return None
        parent = self._exporter.parent(headers) if headers is not None else None
        if not setting.sample(parent is not None):
            return None
        try:
            return self._exporter.root(model, protocol, parent, setting)  # type: ignore[no-any-return]
        except Exception:  # tracing never fails a request
            log.exception("could not start a trace")
            return None

    # -- internals ----------------------------------------------------------------------------
    def _scope(self, model: str) -> _Setting:
        return self._models.get(model, self._global) if model else self._global

    def _global_values(self) -> _Values:
        g = self._global
        return _Values(g.level, g.rate, g.count, g.log_frequency)

    def _make(self, base: _Values, specified: Mapping[str, Any]) -> _Setting:
        values = replace(
            base,
            level=specified.get("trace_level", base.level),
            rate=specified.get("trace_rate", base.rate),
            count=specified.get("trace_count", base.count),
            log_frequency=specified.get("log_frequency", base.log_frequency),
        )
        return _Setting(values, specified, self.config.file, self.config.mode)


def _parse(changes: Mapping[str, list[str] | None]) -> dict[str, Any]:
    """The typed values of the changes (``None``: clear)."""
    parsed: dict[str, Any] = {}
    for name, values in changes.items():
        if name == "trace_file":
            raise UnsupportedError("trace file location can not be updated through network protocol")
        if name in _READ_ONLY:
            raise InvalidInputError(
                f"trace setting '{name}' cannot be changed at run time (set it with --trace-config)"
            )
        if name not in _FIELDS:
            raise InvalidInputError(
                f"unknown trace setting '{name}' (the settings: trace_level, trace_rate, trace_count, "
                "log_frequency, trace_file)"
            )
        if values is None:
            parsed[name] = None
            continue
        for value in values:
            if not isinstance(value, str):
                raise InvalidInputError(f"trace setting '{name}' takes strings, got {value!r}")
        if name == "trace_level":
            parsed[name] = _levels(values)
            continue
        if len(values) != 1:
            raise InvalidInputError(f"expect only 1 value for '{name}', got {len(values)}")
        text = values[0]
        try:
            number = int(text)
        except ValueError:
            raise InvalidInputError(f"Unable to parse '{name}', got: {text}") from None
        low, high = _RANGES[name]
        try:
            check_range(name, number, low, high)
        except ValueError:
            raise InvalidInputError(
                f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {text}"
            ) from None
        parsed[name] = number
    return parsed


def _levels(values: list[str]) -> tuple[str, ...]:
    names = [v.strip().upper() for v in values]
    if "OFF" in names:
        if len(names) != 1:
            raise InvalidInputError("Expect only one trace level 'OFF' is specified")
        return ()
    for name, raw in zip(names, values):
        if name not in LEVELS:
            raise InvalidInputError(f"invalid trace_level '{raw}' (expected OFF, TIMESTAMPS or TENSORS)")
    return tuple(level for level in LEVELS if level in names)

