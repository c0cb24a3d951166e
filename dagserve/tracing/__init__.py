"""Request tracing as Triton users know it: the trace extension's settings, ``--trace-config``,
Triton's JSON trace file, and OpenTelemetry spans (``pip install dagserve[otel]``).

:class:`Tracing` (one per server) holds the settings and samples requests; the engine sees
only :mod:`.context`. See docs/tracing.md.
"""

from .config import DEFAULT_OTLP_URL, LEVELS, TraceConfig, parse_trace_config
from .context import CURRENT, Span
from .settings import Tracing

__all__ = ["CURRENT", "DEFAULT_OTLP_URL", "LEVELS", "Span", "TraceConfig", "Tracing", "parse_trace_config"]
