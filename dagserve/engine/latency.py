"""Latency distributions behind the metrics endpoint: Triton's histograms and summaries.

``--metrics-config`` (:class:`MetricsConfig`) turns them on as Triton's does:
``histogram_latencies=true`` records ``nv_inference_first_response_histogram_ms`` per model
(and dagserve's per-pipeline-step histogram), ``summary_latencies=true`` records the
``nv_inference_*_summary_us`` quantiles over a sliding window. When both are off (the
default) no recorder exists and the request path pays nothing.

Plain data only: the metrics frontend renders snapshots; nothing here knows Prometheus.
Recording happens on the event loop (as :class:`~dagserve.engine.stats.ModelStatistics`);
snapshots are read there too.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = [
    "DEFAULT_QUANTILES",
    "FIRST_RESPONSE_BUCKETS_MS",
    "STEP_BUCKETS_MS",
    "Histogram",
    "LatencyRecorder",
    "MetricsConfig",
    "Summary",
]

DEFAULT_QUANTILES: tuple[tuple[float, float], ...] = (
    (0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001),
)
"""Triton's default ``summary_quantiles`` (quantile, allowed error)."""

FIRST_RESPONSE_BUCKETS_MS: tuple[float, ...] = (100.0, 500.0, 2000.0, 5000.0)
"""Triton's default buckets of ``nv_inference_first_response_histogram_ms``."""

STEP_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
)
"""Buckets of ``dagserve_pipeline_step_histogram_ms``: a step is often sub-millisecond."""

SUMMARY_FAMILIES = ("request", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def _parse_bool(key: str, value: str) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise ConfigError(f"--metrics-config {key}={value}: expected true or false")


def _parse_quantiles(value: str) -> tuple[tuple[float, float], ...]:
    pairs = []
    for part in value.split(","):
        quantile, sep, error = part.partition(":")
        try:
            if not sep:
                raise ValueError
            q, e = float(quantile), float(error)
        except ValueError:
            raise ConfigError(
                f"--metrics-config summary_quantiles={value}: {part.strip()!r} is not <quantile>:<error> "
                "(e.g. summary_quantiles=0.5:0.05,0.9:0.01)"
            ) from None
        if not (0.0 <= q <= 1.0 and 0.0 <= e <= 1.0):
            raise ConfigError(f"--metrics-config summary_quantiles={value}: quantile and error must be in [0, 1]")
        pairs.append((q, e))
    return tuple(pairs)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Which latency metrics are kept, Triton's ``--metrics-config`` settings.

    ``counter_latencies`` (default true): the ``nv_inference_*_duration_us`` counters.
    ``histogram_latencies`` (default false): ``nv_inference_first_response_histogram_ms`` per
    model and ``dagserve_pipeline_step_histogram_ms`` per pipeline step.
    ``summary_latencies`` (default false): the ``nv_inference_*_summary_us`` and
    ``nv_cache_*_summary_per_model`` summaries, with ``summary_quantiles`` over the last
    ``summary_max_age`` seconds kept in ``summary_age_buckets`` slices (prometheus-cpp's
    defaults, 60 s and 5, which Triton does not expose).
    """

    counter_latencies: bool = True
    histogram_latencies: bool = False
    summary_latencies: bool = False
    summary_quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
    summary_max_age: float = 60.0
    summary_age_buckets: int = 5

    SETTINGS = ("counter_latencies", "histogram_latencies", "summary_latencies", "summary_quantiles",
                "summary_max_age", "summary_age_buckets")

    @classmethod
    def parse(cls, settings: Iterable[str]) -> MetricsConfig:
        """From ``<setting>=<value>`` strings, later ones winning, as ``--metrics-config`` gives them.

        Raises:
            ConfigError: a malformed setting, an unknown one, or a bad value (naming it).
        """
        values: dict[str, Any] = {}
        for setting in settings:
            key, sep, value = setting.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value or "," in key:
                raise ConfigError(f"--metrics-config option format is <setting>=<value>. Got {setting}")
            if key in ("counter_latencies", "histogram_latencies", "summary_latencies"):
                values[key] = _parse_bool(key, value)
            elif key == "summary_quantiles":
                values[key] = _parse_quantiles(value)
            elif key == "summary_max_age":
                try:
                    values[key] = float(value)
                except ValueError:
                    values[key] = -1.0
                if not values[key] > 0:
                    raise ConfigError(f"--metrics-config summary_max_age={value}: expected a positive number of seconds")
            elif key == "summary_age_buckets":
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(f"--metrics-config summary_age_buckets={value}: expected a positive integer")
                values[key] = int(value)
            else:
                raise ConfigError(
                    f"--metrics-config: unknown setting '{key}' (known: {', '.join(cls.SETTINGS)})"
                )
        return cls(**values)

    def recorder(
        self, *, cached: bool, decoupled: bool,
        first_response_buckets: tuple[float, ...] | None = None, step_buckets: tuple[float, ...] | None = None,
    ) -> LatencyRecorder | None:
        """A recorder for one model version, or None when no distribution is kept.
        ``*_buckets`` replace the histograms' default buckets (the model's ``model_metrics``)."""
        if not (self.histogram_latencies or self.summary_latencies):
            return None
        return LatencyRecorder(self, cached=cached, decoupled=decoupled,
                               first_response_buckets=first_response_buckets, step_buckets=step_buckets)


class Histogram:
    """Counts of observations per bucket (upper bounds, ``le``), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """``buckets``: (upper bound, cumulative count) pairs ending with (inf, count)."""
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return {"buckets": cumulative, "sum": self.sum, "count": self.count}


def _key(value: float) -> float:
    """``value`` rounded to three significant digits (exact below 1000): the window keeps a
    count per key, so its size is bounded whatever the request rate; a quantile is off by at
    most 0.5 % of its value."""
    if value < 1000:
        return round(value)
    scale = 10 ** (len(str(int(value))) - 3)
    return float(round(value / scale) * scale)


class Summary:
    """Quantiles over a sliding window plus the all-time sum and count, as a Prometheus summary.

    The window is ``age_buckets`` slices of ``max_age / age_buckets`` seconds; a quantile is read
    over the slices younger than ``max_age``, from per-value counts (see :func:`_key`), so its
    rank is exact and its value within 0.5 % — inside the errors Triton's defaults allow.
    """

    __slots__ = ("_age_buckets", "_slice_secs", "_slices", "count", "quantiles", "sum")

    def __init__(self, quantiles: tuple[tuple[float, float], ...], max_age: float, age_buckets: int) -> None:
        self.quantiles = quantiles
        self.sum = 0.0
        self.count = 0
        self._age_buckets = age_buckets
        self._slice_secs = max_age / age_buckets
        self._slices: list[tuple[int, dict[float, int]]] = []  # (slice number, value -> count), oldest first

    def observe(self, value: float, now: float | None = None) -> None:
        self.sum += value
        self.count += 1
        number = int((time.monotonic() if now is None else now) / self._slice_secs)
        slices = self._slices
        if not slices or slices[-1][0] != number:
            slices.append((number, {}))
            self._expire(number)
        counts = slices[-1][1]
        key = _key(value)
        counts[key] = counts.get(key, 0) + 1

    def _expire(self, number: int) -> None:
        oldest = number - self._age_buckets + 1
        while self._slices and self._slices[0][0] < oldest:
            self._slices.pop(0)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """``quantiles``: (quantile, value, or NaN when the window is empty) pairs."""
        self._expire(int((time.monotonic() if now is None else now) / self._slice_secs))
        merged: dict[float, int] = {}
        for _, counts in self._slices:
            for key, n in counts.items():
                merged[key] = merged.get(key, 0) + n
        values = sorted(merged.items())
        total = sum(merged.values())
        result: list[tuple[float, float]] = []
        for quantile, _error in self.quantiles:
            value = float("nan")
            if total:
                rank = max(1, int(quantile * total + 0.5))  # the rank-th smallest observation
                seen = 0
                for key, n in values:
                    seen += n
                    if seen >= rank:
                        value = key
                        break
            result.append((quantile, value))
        return {"quantiles": result, "sum": self.sum, "count": self.count}


class LatencyRecorder:
    """The distributions of one model version that ``MetricsConfig`` asks for.

    Values are Triton's units: microseconds for summaries, milliseconds for histograms, whose
    buckets are Triton's defaults unless the model's ``model_metrics`` sets others.
    As on Triton, a model with the response cache has no request-duration summary (its cache
    lookups and inserts would skew it) but has cache hit/miss summaries; the first response of a
    decoupled model is reported by the stream (:meth:`first_response`), not by success.
    """

    def __init__(
        self, config: MetricsConfig, *, cached: bool, decoupled: bool,
        first_response_buckets: tuple[float, ...] | None = None, step_buckets: tuple[float, ...] | None = None,
    ) -> None:
        self._decoupled = decoupled
        self.first_response_ms = (
            Histogram(first_response_buckets or FIRST_RESPONSE_BUCKETS_MS) if config.histogram_latencies else None
        )
        self._step_buckets = step_buckets or STEP_BUCKETS_MS
        self.steps: dict[tuple[str, str], Histogram] | None = {} if config.histogram_latencies else None
        self.summaries: dict[str, Summary] = {}
        if config.summary_latencies:
            names = [n for n in SUMMARY_FAMILIES if (n != "request" or not cached)]
            if not cached:
                names = [n for n in names if not n.startswith("cache_")]
            self.summaries = {
                n: Summary(config.summary_quantiles, config.summary_max_age, config.summary_age_buckets) for n in names
            }

    def success(self, total_ns: int, queue_ns: int) -> None:
        """A request answered after ``total_ns``, ``queue_ns`` of it queued."""
        if self.first_response_ms is not None and not self._decoupled:
            self.first_response_ms.observe(total_ns / 1e6)
        summaries = self.summaries
        if summaries:
            if "request" in summaries:
                summaries["request"].observe(total_ns / 1e3)
            summaries["queue"].observe(queue_ns / 1e3)

    def first_response(self, ns: int) -> None:
        """The first response of a request (of a decoupled model) came ``ns`` after it started."""
        if self.first_response_ms is not None:
            self.first_response_ms.observe(ns / 1e6)

    def execution(self, input_ns: int, infer_ns: int, output_ns: int, requests: int) -> None:
        """One execution; each of its ``requests`` requests spent these times computing."""
        summaries = self.summaries
        if summaries:
            for name, ns in (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
                summary = summaries[name]
                for _ in range(requests):
                    summary.observe(ns / 1e3)

    def cache(self, *, hit: bool, lookup_ns: int) -> None:
        """A response-cache lookup; a hit is also the request's (first) response."""
        if hit and self.first_response_ms is not None:
            self.first_response_ms.observe(lookup_ns / 1e6)
        summary = self.summaries.get("cache_hit" if hit else "cache_miss")
        if summary is not None:
            summary.observe(lookup_ns / 1e3)

    def step(self, step: str, model: str, ns: int) -> None:
        """A pipeline step's call succeeded after ``ns``."""
        if self.steps is not None:
            histogram = self.steps.get((step, model))
            if histogram is None:
                histogram = self.steps[(step, model)] = Histogram(self._step_buckets)
            histogram.observe(ns / 1e6)

    def snapshot(self) -> dict[str, Any]:
        return {
            "first_response_ms": None if self.first_response_ms is None else self.first_response_ms.snapshot(),
            "summaries": {name: s.snapshot() for name, s in self.summaries.items()},
            "steps": {key: h.snapshot() for key, h in (self.steps or {}).items()},
        }
