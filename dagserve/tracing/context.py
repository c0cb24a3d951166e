"""What the engine sees of tracing: the span of the work in progress, and the span protocol.

A sampled request carries a :class:`Span` down the call tree. :data:`CURRENT` holds the span
that new work hangs under (the request's root span, a model's span while it runs, a pipeline
step's span while the step runs); the engine reads it once per model call and per pipeline
step, and does nothing else when it is ``None`` — the whole cost of tracing while it is off.
A batch execution runs in the batcher's own task, so the engine also hands each request's
model span to the batch through ``InferRequest.trace``.

Exporters (OpenTelemetry, Triton's JSON trace file) implement :class:`Span`; nothing here
imports them.
"""

from __future__ import annotations

import contextvars
from typing import Protocol

__all__ = ["CURRENT", "Span"]

CURRENT: contextvars.ContextVar[Span | None] = contextvars.ContextVar("dagserve_trace_span", default=None)
"""The span new work of this task hangs under; ``None`` when the request is not traced."""


class Span(Protocol):
    """One timed piece of a traced request. Spans are made by their parent and ended once by
    their maker; none of the methods raises (an exporter's failure is logged, never passed to
    the request)."""

    def model(self, name: str, version: str, request_id: str) -> Span:
        """A child span for one call of a model (or pipeline) version, started now."""
        ...

    def step(self, pipeline: str, step: str, model: str) -> Span:
        """A child span for one pipeline step (all its calls: a mapped step's items, a loop's
        rounds), started now."""
        ...

    def compute(self, model: str, batch_size: int, requests: int) -> Span:
        """A child span for one batch execution of the model this span calls, started now:
        ``batch_size`` rows from ``requests`` requests."""
        ...

    def event(self, name: str) -> None:
        """Record a named timestamp (Triton's names: ``QUEUE_START``, ``HTTP_SEND_START``...)
        now, when the trace level asks for timestamps."""
        ...

    def end(self, error: BaseException | None = None) -> None:
        """End the span now; ``error``: the request failed with it."""
        ...

    def traceparent(self) -> str | None:
        """This span as a W3C ``traceparent`` header, for a call to another server (the
        ``remote`` backend), or ``None`` when the exporter has no such context."""
        ...
