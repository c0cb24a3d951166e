"""Per-model-version inference statistics, in the shape of Triton's statistics extension.

The scheduler records into a :class:`ModelStatistics`; the frontends and the metrics endpoint
read :meth:`ModelStatistics.snapshot`. Durations are monotonic nanoseconds; ``last_inference``
is wall-clock milliseconds since the epoch, as Triton reports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import OverloadedError, RequestCancelledError, RequestTimeoutError
from ..repository.config import FIRST_RESPONSE_HISTOGRAM, STEP_HISTOGRAM
from .latency import LatencyRecorder, MetricsConfig

__all__ = ["FAILURE_REASONS", "Duration", "ModelStatistics", "failure_reason"]

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
"""Triton's ``reason`` label values of ``nv_inference_request_failure``."""


def failure_reason(error: BaseException | None) -> str:
    """Triton's failure reason for a request that failed with ``error`` after validation:
    REJECTED (queue full, queue timeout), CANCELED (the client went away), BACKEND (the model
    failed), OTHER (unknown)."""
    if error is None:
        return "OTHER"
    if isinstance(error, (OverloadedError, RequestTimeoutError)):
        return "REJECTED"
    if isinstance(error, (RequestCancelledError, asyncio.CancelledError)):
        return "CANCELED"
    return "BACKEND"


def _nothing_pending() -> int:
    return 0


@dataclass(slots=True)
class Duration:
    """A count of events and their total time."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStatistics:
    """Counters for one model version. Not thread-safe: only the event loop records.

    Recording is on every request's path, so it only adds to plain integers; the Triton JSON
    shape is built when someone asks (:meth:`snapshot`).
    """

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        # Per request: a batch's time counts once per request in it (as Triton's). A backend
        # that measures them splits its execute time into input preparation, the model's own
        # compute and output extraction; other backends' whole execute is compute_infer.
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.cache_hit = Duration()
        self.cache_miss = Duration()
        # batch size -> executions and their input / infer / output time
        self.batches: dict[int, tuple[Duration, Duration, Duration]] = {}
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)  # failed requests by reason
        self.pending: Callable[[], int] = _nothing_pending
        """Requests waiting to execute now; the scheduler installs its own count."""
        self.endpoints: Callable[[], dict[str, dict[str, float]]] | None = None
        """A remote model's round trips by endpoint (see backends.remote); None for others."""
        self.latency: LatencyRecorder | None = None
        """Histograms and summaries, when ``--metrics-config`` asks for them (:meth:`configure`)."""
        self.cache_enabled = False
        """The version uses the response cache (Triton shows nv_cache_* only for such models)."""
        self.load_seconds: float | None = None
        """How long the version took to load (Triton's ``nv_model_load_duration_secs``); None
        until it is READY."""
        self._last_ns = 0  # perf_counter_ns of the last answered request
        # perf_counter_ns -> epoch milliseconds, for ``last_inference`` (Triton reports wall time).
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()

    def configure(
        self, config: MetricsConfig, *, cached: bool, decoupled: bool,
        buckets: Callable[[str], tuple[float, ...] | None] | None = None,
    ) -> None:
        """Keep the distributions ``config`` asks for (before the version serves);
        ``buckets(family)`` gives a histogram family's buckets when the model sets them."""
        self.cache_enabled = cached
        self.latency = config.recorder(
            cached=cached, decoupled=decoupled,
            first_response_buckets=buckets(FIRST_RESPONSE_HISTOGRAM) if buckets else None,
            step_buckets=buckets(STEP_HISTOGRAM) if buckets else None,
        )

    def record_success(self, *, total_ns: int, queue_ns: int) -> None:
        """One request answered successfully after ``total_ns`` (``queue_ns`` of it queued)."""
        success = self.success
        success.count += 1
        success.ns += total_ns
        queue = self.queue
        queue.count += 1
        queue.ns += queue_ns
        self._last_ns = time.perf_counter_ns()
        if self.latency is not None:
            self.latency.success(total_ns, queue_ns)

    def record_cache(self, *, hit: bool, lookup_ns: int) -> None:
        """One response-cache lookup (a hit also counts as a successful request)."""
        (self.cache_hit if hit else self.cache_miss).add(lookup_ns)
        if self.latency is not None:
            self.latency.cache(hit=hit, lookup_ns=lookup_ns)
        if hit:
            self.success.add(lookup_ns)
            self._last_ns = time.perf_counter_ns()

    def record_failure(self, *, total_ns: int, error: BaseException | None = None, reason: str = "") -> None:
        """One request failed after ``total_ns``; its ``reason`` (one of
        :data:`FAILURE_REASONS`) is given, or derived from ``error``. Requests refused by
        validation never get here, as on Triton: they are not the model's failures."""
        self.fail.add(total_ns)
        self.failures[reason or failure_reason(error)] += 1
        self._last_ns = time.perf_counter_ns()

    def record_execution(
        self, *, batch_size: int, requests: int, infer_ns: int, split: tuple[int, int] | None = None
    ) -> None:
        """One backend execution of ``requests`` requests holding ``batch_size`` inferences,
        taking ``infer_ns``; ``split`` is the (input, output) part of that time the backend
        measured, if it did."""
        self.execution_count += 1
        self.inference_count += batch_size
        input_ns, output_ns = split if split is not None else (0, 0)
        compute_ns = max(infer_ns - input_ns - output_ns, 0)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(compute_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        per_size = self.batches.get(batch_size)
        if per_size is None:
            per_size = self.batches[batch_size] = (Duration(), Duration(), Duration())
        per_size[0].add(input_ns)
        per_size[1].add(compute_ns)
        per_size[2].add(output_ns)
        if self.latency is not None:
            self.latency.execution(input_ns, compute_ns, output_ns, requests)

    def snapshot(self) -> dict[str, Any]:
        """Triton's JSON shape for one entry of ``model_stats``."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": (self._last_ns + self._epoch_offset_ns) // 1_000_000 if self._last_ns else 0,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": self.cache_hit.as_dict(),
                "cache_miss": self.cache_miss.as_dict(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": d_in.as_dict(),
                    "compute_infer": d_infer.as_dict(),
                    "compute_output": d_out.as_dict(),
                }
                for size, (d_in, d_infer, d_out) in sorted(self.batches.items())
            ],
            "memory_usage": [],
            # dagserve's additions, read by the metrics endpoint (clients ignore unknown keys).
            "pending_request_count": self.pending(),
            "failure_reasons": dict(self.failures),
        } | ({"remote_endpoints": self.endpoints()} if self.endpoints is not None else {})
