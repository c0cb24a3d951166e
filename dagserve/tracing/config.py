"""Tracing at start-up: :class:`TraceConfig`, and ``--trace-config`` as Triton spells it.

``--trace-config`` takes ``<setting>=<value>`` for the global settings (``rate``, ``level``,
``count``, ``mode``) and ``<mode>,<setting>=<value>`` for a mode's own (``triton,file=``,
``triton,log-frequency=``, ``opentelemetry,url=``, ``opentelemetry,resource=key=value``,
``opentelemetry,bsp_max_queue_size=`` ...), repeated as often as needed; ``level`` may be given
more than once to trace several things, and ``level=OFF`` anywhere turns tracing off, as on
Triton. Unlike Triton, an unknown setting is an error rather than ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DEFAULT_OTLP_URL", "LEVELS", "TraceConfig", "parse_trace_config"]

LEVELS = ("TIMESTAMPS", "TENSORS")
"""The trace levels, in Triton's order; none of them is ``OFF``."""

DEFAULT_OTLP_URL = "http://localhost:4318/v1/traces"
"""Where spans go in ``opentelemetry`` mode when no ``url`` is given (Triton's default)."""

_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class TraceConfig:
    """The tracing settings a server starts with (Triton's ``--trace-config``); the global
    and per-model settings can change at run time through the trace extension, this stays
    what clearing a global setting goes back to.

    ``level``: empty is ``OFF``; else some of :data:`LEVELS`. ``rate``: one request in
    ``rate`` is traced (0: only requests carrying a W3C ``traceparent``, in
    ``opentelemetry`` mode). ``count``: traces left to take, -1 for no limit. ``mode``:
    ``triton`` writes Triton's JSON trace file ``file`` (every ``log_frequency`` traces to
    ``file.<n>``; 0: at shutdown to ``file``); ``opentelemetry`` exports spans over OTLP/HTTP
    to ``url`` (``pip install dagserve[otel]``) with the batch span processor's ``bsp_*``
    settings and ``resource`` attributes, or to ``exporter`` when given (any OpenTelemetry
    ``SpanExporter``, e.g. the SDK's in-memory one).

    Raises:
        ValueError: a value out of range, naming the setting.
    """

    mode: Literal["triton", "opentelemetry"] = "triton"
    level: tuple[str, ...] = ()
    rate: int = 1000
    count: int = -1
    file: str = ""
    log_frequency: int = 0
    url: str = DEFAULT_OTLP_URL
    resource: tuple[tuple[str, str], ...] = ()
    bsp_max_queue_size: int = 2048
    bsp_schedule_delay: int = 5000
    bsp_max_export_batch_size: int = 512
    exporter: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("triton", "opentelemetry"):
            raise ValueError(f"trace mode '{self.mode}' is not one of triton, opentelemetry")
        unknown = [level for level in self.level if level not in LEVELS]
        if unknown:
            raise ValueError(f"trace level '{unknown[0]}' is not one of OFF, {', '.join(LEVELS)}")
        object.__setattr__(self, "level", tuple(level for level in LEVELS if level in self.level))
        check_range("rate", self.rate, 0, _UINT32_MAX)
        check_range("count", self.count, -1, _INT32_MAX)
        check_range("log-frequency", self.log_frequency, 0, _UINT32_MAX)
        for name in ("bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size"):
            check_range(name, getattr(self, name), 1 if name != "bsp_schedule_delay" else 0, _UINT32_MAX)
        if self.bsp_max_export_batch_size > self.bsp_max_queue_size:
            raise ValueError(
                f"bsp_max_export_batch_size ({self.bsp_max_export_batch_size}) must not exceed "
                f"bsp_max_queue_size ({self.bsp_max_queue_size})"
            )

    @property
    def enabled(self) -> bool:
        """Whether any level is on."""
        return bool(self.level)


def check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"trace setting '{name}' must be a whole number in [{low}, {high}], got {value!r}")


def parse_level(text: str) -> str | None:
    """A level named as Triton's command line accepts it (any case; ``off``/``false`` -> None,
    ``on``/``true``/``min``/``max`` -> TIMESTAMPS).

    Raises:
        ValueError: not a level.
    """
    word = text.strip().lower()
    if word in ("off", "false"):
        return None
    if word in ("timestamps", "on", "true", "min", "max"):
        return "TIMESTAMPS"
    if word == "tensors":
        return "TENSORS"
    raise ValueError(f"invalid trace level '{text}' (expected OFF, TIMESTAMPS or TENSORS)")


def _int(setting: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--trace-config {setting}={value}: '{value}' is not a whole number") from None


_GLOBAL = ("rate", "level", "count", "mode")
_MODE_SETTINGS = {
    "triton": ("file", "log-frequency"),
    "opentelemetry": ("url", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size"),
}


def parse_trace_config(values: Iterable[str]) -> TraceConfig:
    """The :class:`TraceConfig` that ``--trace-config`` flags (each ``values`` item) give.

    Raises:
        ValueError: a malformed flag, an unknown mode or setting, or a bad value; the message
            quotes the flag.
    """
    fields: dict[str, Any] = {}
    levels: list[str] = []
    off = False
    resource: list[tuple[str, str]] = []
    mode_settings: list[tuple[str, str, str]] = []
    for raw in values:
        head, comma, rest = raw.partition(",")
        if comma and "=" not in head:
            mode, setting_text = head.strip().lower(), rest
            if mode not in _MODE_SETTINGS:
                raise ValueError(
                    f"--trace-config {raw}: invalid trace mode '{head}' (expected triton or opentelemetry)"
                )
        else:
            mode, setting_text = "", raw
        setting, equals, value = setting_text.partition("=")
        setting = setting.strip()
        if not equals or not setting or not value:
            raise ValueError(
                f"--trace-config {raw}: expected <setting>=<value> or <mode>,<setting>=<value>"
            )
        if not mode:
            if setting not in _GLOBAL:
                raise ValueError(
                    f"--trace-config {raw}: unknown global setting '{setting}' (global settings: "
                    f"{', '.join(_GLOBAL)}; mode settings take a mode first, e.g. triton,file=PATH)"
                )
            if setting == "level":
                level = parse_level(value)
                if level is None:
                    off = True
                elif level not in levels:
                    levels.append(level)
            elif setting == "mode":
                if value.lower() not in _MODE_SETTINGS:
                    raise ValueError(f"--trace-config {raw}: invalid trace mode '{value}' (expected triton or opentelemetry)")
                fields["mode"] = value.lower()
            else:
                fields[setting] = _int(setting, value)
        else:
            if setting not in _MODE_SETTINGS[mode]:
                raise ValueError(
                    f"--trace-config {raw}: unknown {mode} setting '{setting}' (its settings: "
                    f"{', '.join(_MODE_SETTINGS[mode])})"
                )
            mode_settings.append((mode, setting, value))
    chosen = fields.get("mode", "triton")
    for mode, setting, value in mode_settings:
        # Every flag must be well formed; only the settings of the mode in use apply (Triton's rule).
        parsed: Any = value
        if setting == "resource":
            key, equals, attribute = value.partition("=")
            if not equals or not key:
                raise ValueError(f"--trace-config opentelemetry,resource={value}: expected resource=<key>=<value>")
            parsed = (key, attribute)
        elif setting not in ("file", "url"):
            parsed = _int(setting, value)
        if mode != chosen:
            continue
        if setting == "resource":
            resource.append(parsed)
        else:
            fields[setting.replace("-", "_")] = parsed
    return TraceConfig(level=() if off else tuple(levels), resource=tuple(resource), **fields)
