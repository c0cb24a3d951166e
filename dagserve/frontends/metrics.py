"""Prometheus metrics on their own port, with Triton's family names, labels, help and types.

Core code never creates Prometheus objects: each scrape reads the server's statistics
(counters, the latency distributions ``--metrics-config`` asks for, models' own metrics from
``pb_utils.MetricFamily``) and the last CPU/GPU poll (:mod:`.metrics_system`), and writes the
Prometheus text format (0.0.4), so existing Triton dashboards work unchanged.

The text is written here rather than by ``prometheus_client``: its writer names a counter's
``# HELP`` / ``# TYPE`` lines ``<name>_total`` (prometheus_client 0.26 writes ``# TYPE
nv_inference_count_total counter`` above ``nv_inference_count{...}`` samples), where Triton's
counters have no such suffix, and it has no summary quantiles to offer. A family with no
sample is not written.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..custom_metrics import MetricKind
from ..engine import Server
from ..engine.stats import FAILURE_REASONS, ModelStatistics
from .http.server import serve_app
from .metrics_system import SystemMetrics
from .metrics_text import Labels, Writer, merge, number, sample

__all__ = ["create_metrics_app", "render_metrics", "serve_metrics"]

# (metric name, help, where it comes from in a statistics snapshot, scale): Triton's help texts.
_COUNTS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     ("inference_stats", "success", "count"), 1),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     ("inference_count",), 1),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     ("execution_count",), 1),
)
_DURATIONS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds (includes cached requests)",
     ("inference_stats", "success", "ns"), 1e-3),
    ("nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds (includes cached requests)",
     ("inference_stats", "queue", "ns"), 1e-3),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)",
     ("inference_stats", "compute_input", "ns"), 1e-3),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)",
     ("inference_stats", "compute_infer", "ns"), 1e-3),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)",
     ("inference_stats", "compute_output", "ns"), 1e-3),
)
# Only for models that use the response cache, as on Triton.
_CACHE: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", ("inference_stats", "cache_hit", "count"), 1),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model",
     ("inference_stats", "cache_miss", "count"), 1),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
     ("inference_stats", "cache_hit", "ns"), 1e-3),
    ("nv_cache_miss_duration_per_model", "Total cache miss (insert+lookup) duration per model, in microseconds",
     ("inference_stats", "cache_miss", "ns"), 1e-3),
)
# (summary name in LatencyRecorder, family, help): Triton's.
_SUMMARIES = (
    ("request", "nv_inference_request_summary_us",
     "Summary of inference request duration in microseconds (includes cached requests)"),
    ("queue", "nv_inference_queue_summary_us",
     "Summary of inference queuing duration in microseconds (includes cached requests)"),
    ("compute_input", "nv_inference_compute_input_summary_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)"),
    ("compute_infer", "nv_inference_compute_infer_summary_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)"),
    ("compute_output", "nv_inference_compute_output_summary_us",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)"),
    ("cache_hit", "nv_cache_hit_summary_per_model", "Summary of cache hit counts/durations per model, in microseconds."),
    ("cache_miss", "nv_cache_miss_summary_per_model",
     "Summary of cache miss counts/durations per model, in microseconds."),
)

# Per pipeline step (dagserve's own; Triton has no such metrics): (name, help, path, scale).
_STEP_COUNTERS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("dagserve_pipeline_step_success", "Successful calls of a pipeline step", ("success", "count"), 1),
    ("dagserve_pipeline_step_failure", "Failed calls of a pipeline step", ("fail", "count"), 1),
    ("dagserve_pipeline_step_skipped", "Calls of a pipeline step skipped by a condition", ("skipped", "count"), 1),
    ("dagserve_pipeline_step_duration_us", "Cumulative time in a pipeline step's successful calls, microseconds",
     ("success", "ns"), 1e-3),
    ("dagserve_pipeline_step_queue_duration_us",
     "Cumulative time a pipeline step waited for a slot (max_inflight_requests), microseconds", ("queue", "ns"), 1e-3),
)


# Per remote model and endpoint (backend: remote; dagserve's own): (name, help, key, scale).
_REMOTE_COUNTERS: tuple[tuple[str, str, str, float], ...] = (
    ("dagserve_remote_round_trip_success", "Successful round trips of a remote model to one endpoint", "count", 1),
    ("dagserve_remote_round_trip_failure", "Failed round trips of a remote model to one endpoint", "failures", 1),
    ("dagserve_remote_round_trip_duration_us",
     "Cumulative time of a remote model's successful round trips to one endpoint, microseconds", "ns", 1e-3),
)

_KIND_TYPES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}


def render_metrics(server: Server, system: SystemMetrics | None = None) -> bytes:
    """The server's metrics in the Prometheus text exposition format (version 0.0.4)."""
    sources = server.statistics_sources()
    entries = [(s, s.snapshot(), {"model": s.name, "version": s.version}) for s in sources]
    counters = server.options.metrics_config.counter_latencies
    out = Writer()
    for name, doc, path, scale in _COUNTS:
        out.family(name, doc, "counter", (sample(name, labels, _lookup(e, path) * scale) for _, e, labels in entries))
        if name == "nv_inference_request_success":
            out.family("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                       "counter", _failures(entries))
    if counters:
        for name, doc, path, scale in _DURATIONS:
            out.family(name, doc, "counter",
                       (sample(name, labels, _lookup(e, path) * scale) for _, e, labels in entries))
    out.family("nv_inference_pending_request_count",
               "Instantaneous number of pending requests awaiting execution per-model.", "gauge",
               (sample("nv_inference_pending_request_count", labels, float(e.get("pending_request_count", 0)))
                for _, e, labels in entries))
    out.family("nv_model_load_duration_secs", "Model load time in seconds", "gauge",
               (sample("nv_model_load_duration_secs", labels, s.load_seconds)
                for s, _, labels in entries if s.load_seconds is not None))
    if counters:
        cached = [(s, e, labels) for s, e, labels in entries if s.cache_enabled]
        for name, doc, path, scale in _CACHE:
            out.family(name, doc, "counter", (sample(name, labels, _lookup(e, path) * scale) for _, e, labels in cached))
    _latency_families(out, entries)
    _step_and_remote_families(out, entries)
    _cache_families(out, server)
    if system is not None:
        system.render(out.family)
    _custom_families(out, server)
    return out.text()


def _latency_families(out: Writer, entries: list[tuple[ModelStatistics, dict[str, Any], Labels]]) -> None:
    recorded = [(s.latency.snapshot(), labels) for s, _, labels in entries if s.latency is not None]
    name = "nv_inference_first_response_histogram_ms"
    out.family(name, "Duration from request to first response in milliseconds", "histogram",
               (line for snap, labels in recorded if snap["first_response_ms"] is not None
                for line in _histogram(name, labels, snap["first_response_ms"])))
    for key, family, doc in _SUMMARIES:
        out.family(family, doc, "summary",
                   (line for snap, labels in recorded if key in snap["summaries"]
                    for line in _summary(family, labels, snap["summaries"][key])))
    name = "dagserve_pipeline_step_histogram_ms"
    out.family(name, "Duration of a pipeline step's successful calls in milliseconds", "histogram",
               (line for snap, labels in recorded for (step, model), histogram in snap["steps"].items()
                for line in _histogram(name, {"pipeline": labels["model"], "version": labels["version"],
                                              "step": step, "model": model}, histogram)))


def _step_and_remote_families(out: Writer, entries: list[tuple[ModelStatistics, dict[str, Any], Labels]]) -> None:
    for name, doc, path, scale in _STEP_COUNTERS:
        out.family(name, doc, "counter", (
            sample(name, {"pipeline": e["name"], "version": e["version"], "step": step["name"],
                           "model": step["model"]}, _lookup(step, path) * scale)
            for _, e, _labels in entries for step in e.get("steps", ())
        ))
    for name, doc, key, scale in _REMOTE_COUNTERS:
        out.family(name, doc, "counter", (
            sample(name, labels | {"endpoint": endpoint}, float(counts[key]) * scale)
            for _, e, labels in entries for endpoint, counts in (e.get("remote_endpoints") or {}).items()
        ))


# The server-wide response cache, named as Triton's local cache reports it (gauges, no labels).
_LOCAL_CACHE = (
    ("nv_cache_util", "Cache utilization [0.0 - 1.0]", "util"),
    ("nv_cache_num_entries", "Number of responses stored in response cache", "entries"),
    ("nv_cache_num_hits", "Number of cache hits in response cache", "hits"),
    ("nv_cache_num_misses", "Number of cache misses in response cache", "misses"),
    ("nv_cache_num_lookups", "Number of cache lookups in response cache", "lookups"),
    ("nv_cache_num_evictions", "Number of cache evictions in response cache", "evictions"),
    ("nv_cache_lookup_duration", "Total cache lookup duration (hit and miss), in microseconds", "lookup_us"),
    ("nv_cache_insertion_duration", "Total cache insertion duration, in microseconds", "insertion_us"),
)


def _cache_families(out: Writer, server: Server) -> None:
    if server.cache is None:
        return
    stats = server.cache.statistics()
    for name, doc, key in _LOCAL_CACHE:
        out.family(name, doc, "gauge", [sample(name, {}, float(stats[key]))])


def _custom_families(out: Writer, server: Server) -> None:
    for family in server.custom_metrics.snapshot():
        name, kind = family["name"], _KIND_TYPES[family["kind"]]
        if kind == "histogram":
            samples = [line for m in family["metrics"] for line in _histogram(name, m["labels"], m)]
        else:
            samples = [sample(name, m["labels"], m["value"]) for m in family["metrics"]]
        out.family(name, family["description"], kind, samples)


def _failures(entries: list[tuple[ModelStatistics, dict[str, Any], Labels]]) -> Iterable[str]:
    """``nv_inference_request_failure`` by Triton's ``reason`` label (every reason, as Triton
    creates them all for each model). Requests refused by validation are not counted."""
    for _, entry, labels in entries:
        reasons = entry.get("failure_reasons") or {}
        for reason in FAILURE_REASONS:
            yield sample("nv_inference_request_failure", {"model": labels["model"], "reason": reason,
                                                           "version": labels["version"]},
                          float(reasons.get(reason, 0)))


def _histogram(name: str, labels: Labels, snapshot: dict[str, Any]) -> Iterable[str]:
    yield sample(name + "_count", labels, float(snapshot["count"]))
    yield sample(name + "_sum", labels, float(snapshot["sum"]))
    for bound, count in snapshot["buckets"]:
        yield sample(name + "_bucket", labels | {"le": number(bound)}, float(count))


def _summary(name: str, labels: Labels, snapshot: dict[str, Any]) -> Iterable[str]:
    yield sample(name + "_count", labels, float(snapshot["count"]))
    yield sample(name + "_sum", labels, float(snapshot["sum"]))
    for quantile, value in snapshot["quantiles"]:
        yield sample(name, labels | {"quantile": number(quantile)}, float(value))


def _lookup(entry: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = entry
    for key in path:
        value = value[key]
    return float(value)


def create_metrics_app(server: Server, system: SystemMetrics | None = None) -> Starlette:
    async def metrics(request: Request) -> Response:
        body = render_metrics(server, system)
        if server.peers is not None:  # --workers N: one answer for the whole server
            body = merge([body, *(text.encode() for text in await server.peers.call("metrics"))])
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/metrics", metrics)])


async def serve_metrics(
    server: Server, *, host: str, port: int, cpu: bool = True, gpu: bool = True, interval_ms: float = 2000.0,
    reuse_port: bool = False, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` until cancelled; reports the bound port through ``task_status``.

    With ``cpu`` / ``gpu``, CPU (``/proc``) and GPU (NVML, when ``nvidia-ml-py`` imports and
    finds a GPU) gauges are polled every ``interval_ms`` milliseconds, as Triton's
    ``--metrics-interval-ms``, and the pinned-memory gauges always; what cannot be read is
    absent, never an error.
    """
    system = SystemMetrics(cpu=cpu, gpu=gpu)  # the pinned-memory gauges are always polled, as Triton's
    async with anyio.create_task_group() as tg:
        await anyio.to_thread.run_sync(system.start)
        tg.start_soon(_poll, system, interval_ms / 1000)
        await serve_app(create_metrics_app(server, system), host=host, port=port, reuse_port=reuse_port,
                        task_status=task_status)
        tg.cancel_scope.cancel()


async def _poll(system: SystemMetrics, interval: float) -> None:
    try:
        while True:
            await anyio.sleep(interval)
            await anyio.to_thread.run_sync(system.poll)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(functools.partial(system.close))
