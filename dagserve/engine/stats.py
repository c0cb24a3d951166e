"""Per-model-version inference statistics, in the shape of Triton's statistics extension.

The scheduler records into a :class:`ModelStatistics`; the frontends and the metrics endpoint
read :meth:`ModelStatistics.snapshot`. Durations are monotonic nanoseconds; ``last_inference``
is wall-clock milliseconds since the epoch, as Triton reports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Duration", "ModelStatistics"]


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


_REQUEST_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                   "cache_hit", "cache_miss")


class ModelStatistics:
    """Counters for one model version. Not thread-safe: only the event loop records."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.requests = {f: Duration() for f in _REQUEST_FIELDS}
        self.batches: dict[int, tuple[Duration, Duration, Duration]] = {}

    def record_success(self, *, total_ns: int, queue_ns: int) -> None:
        """One request answered successfully after ``total_ns`` (``queue_ns`` of it queued)."""
        self.requests["success"].add(total_ns)
        self.requests["queue"].add(queue_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_cache(self, *, hit: bool, lookup_ns: int) -> None:
        """One response-cache lookup (a hit also counts as a successful request)."""
        self.requests["cache_hit" if hit else "cache_miss"].add(lookup_ns)
        if hit:
            self.requests["success"].add(lookup_ns)
            self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, *, total_ns: int) -> None:
        self.requests["fail"].add(total_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_execution(self, *, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend execution of ``requests`` requests holding ``batch_size`` inferences."""
        self.execution_count += 1
        self.inference_count += batch_size
        for field, ns in (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
            self.requests[field].add(ns * requests, requests)
        per_size = self.batches.setdefault(batch_size, (Duration(), Duration(), Duration()))
        for d, ns in zip(per_size, (input_ns, infer_ns, output_ns)):
            d.add(ns)

    def snapshot(self) -> dict[str, Any]:
        """Triton's JSON shape for one entry of ``model_stats``."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {f: d.as_dict() for f, d in self.requests.items()},
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": d[0].as_dict(),
                    "compute_infer": d[1].as_dict(),
                    "compute_output": d[2].as_dict(),
                }
                for size, d in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
