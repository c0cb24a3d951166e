"""``opentelemetry`` trace mode: spans exported over OTLP/HTTP with the OpenTelemetry SDK.

The SDK is an optional extra (``pip install dagserve[otel]``), imported only when a server
starts in this mode. dagserve uses a tracer provider of its own (never the process-wide
global one, so an embedding program keeps its own), a batch span processor with Triton's
``bsp_*`` settings, and the W3C trace-context propagator to continue a client's trace.

The tree of one traced request::

    InferRequest                       (SERVER; the client's span is its parent, if it sent one)
      <model>                          one per model call: triton.model_name, triton.model_version,
        compute                        one per batch execution: dagserve.batch_size ...
        step <name>                    a pipeline's step (pipelines only)
          <member model>
            compute
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError
from .config import TraceConfig

__all__ = ["OtelExporter", "OtelSpan"]

log = logging.getLogger("dagserve.tracing")

_HINT = "opentelemetry mode needs the OpenTelemetry SDK and OTLP exporter: pip install dagserve[otel]"


def _otlp_url(url: str) -> str:
    """Triton's ``url`` may be ``host:port``; the exporter wants a full URL."""
    if "://" not in url:
        url = "http://" + url
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        url = f"{scheme}://{rest}/v1/traces"
    return url


class OtelExporter:
    """Builds the spans of sampled requests and exports them (see the module docstring)."""

    def __init__(self, config: TraceConfig) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ConfigError(f"{_HINT} ({exc})") from None
        exporter = config.exporter
        if exporter is None:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise ConfigError(f"{_HINT} ({exc})") from None
            exporter = OTLPSpanExporter(endpoint=_otlp_url(config.url))
        attributes: dict[str, Any] = {"service.name": "dagserve"}
        attributes.update(dict(config.resource))
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=config.bsp_max_queue_size,
                schedule_delay_millis=config.bsp_schedule_delay,
                max_export_batch_size=config.bsp_max_export_batch_size,
            )
        )
        self._tracer = self._provider.get_tracer("dagserve")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace

    def parent(self, headers: Any) -> Any:
        """The client's span context from ``traceparent`` / ``tracestate``, or ``None``."""
        traceparent = headers("traceparent")
        if not traceparent:
            return None
        carrier = {"traceparent": traceparent}
        tracestate = headers("tracestate")
        if tracestate:
            carrier["tracestate"] = tracestate
        context = self._propagator.extract(carrier)
        if not self._trace.get_current_span(context).get_span_context().is_valid:
            return None
        return context

    def root(self, model: str, protocol: str, parent: Any, setting: Any) -> OtelSpan:
        span = self._tracer.start_span(
            "InferRequest",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={"triton.model_name": model, "dagserve.protocol": protocol},
        )
        return OtelSpan(self, span, setting.timestamps)

    def retire(self, setting: Any) -> None:
        """Spans do not depend on the setting that sampled them."""

    def flush(self) -> None:
        self._provider.force_flush()

    def close(self) -> None:
        self._provider.shutdown()


def _version(version: str) -> int | str:
    return int(version) if version.isdigit() else version


class OtelSpan:
    """One OpenTelemetry span of a traced request (:class:`~.context.Span`)."""

    __slots__ = ("_end_event", "_exporter", "_span", "_timestamps")

    def __init__(self, exporter: OtelExporter, span: Any, timestamps: bool, end_event: str = "") -> None:
        self._exporter = exporter
        self._span = span
        self._timestamps = timestamps
        self._end_event = end_event

    def _child(self, name: str, attributes: dict[str, Any], start_event: str, end_event: str) -> OtelSpan:
        exporter = self._exporter
        span = exporter._tracer.start_span(
            name, context=exporter._trace.set_span_in_context(self._span), attributes=attributes
        )
        child = OtelSpan(exporter, span, self._timestamps, end_event)
        if start_event:
            child.event(start_event)
        return child

    def model(self, name: str, version: str, request_id: str) -> OtelSpan:
        attributes: dict[str, Any] = {"triton.model_name": name, "triton.model_version": _version(version)}
        if request_id:
            attributes["triton.request_id"] = request_id
        return self._child(name, attributes, "REQUEST_START", "REQUEST_END")

    def step(self, pipeline: str, step: str, model: str) -> OtelSpan:
        return self._child(
            f"step {step}", {"dagserve.pipeline": pipeline, "dagserve.step": step, "dagserve.step.model": model}, "", ""
        )

    def compute(self, model: str, batch_size: int, requests: int) -> OtelSpan:
        return self._child(
            "compute",
            {"triton.model_name": model, "dagserve.batch_size": batch_size, "dagserve.batch_requests": requests},
            "COMPUTE_START",
            "COMPUTE_END",
        )

    def event(self, name: str) -> None:
        if self._timestamps:
            self._span.add_event(name)

    def traceparent(self) -> str | None:
        context = self._span.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def end(self, error: BaseException | None = None) -> None:
        try:
            span = self._span
            if self._end_event:
                self.event(self._end_event)
            if error is not None:
                span.set_status(self._exporter._trace.Status(self._exporter._trace.StatusCode.ERROR, str(error)))
                span.set_attribute("error.type", type(error).__name__)
            span.end()
        except Exception:  # tracing never fails a request
            log.exception("could not end a span")
