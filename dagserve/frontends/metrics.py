"""Prometheus metrics on their own port, with Triton's ``nv_inference_*`` names and labels.

Core code never creates Prometheus objects: each scrape reads the server's statistics
snapshots and renders them in the Prometheus text format, so existing Triton dashboards work
unchanged. The text is written here rather than by ``prometheus_client``: that library renames
a counter's ``# TYPE`` line to ``<name>_total``, and Triton's counters (``nv_inference_count``)
have no such suffix.
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..engine import Server
from ..engine.stats import FAILURE_REASONS
from .http.server import serve_app

__all__ = ["create_metrics_app", "render_metrics", "serve_metrics"]

# (metric name, help, where it comes from in a statistics snapshot, scale)
_COUNTERS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     ("inference_stats", "success", "count"), 1),
    ("nv_inference_count", "Number of inferences performed (a batch of N counts N)",
     ("inference_count",), 1),
    ("nv_inference_exec_count", "Number of model executions performed (a batch counts once)",
     ("execution_count",), 1),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     ("inference_stats", "success", "ns"), 1e-3),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     ("inference_stats", "queue", "ns"), 1e-3),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     ("inference_stats", "compute_input", "ns"), 1e-3),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     ("inference_stats", "compute_infer", "ns"), 1e-3),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     ("inference_stats", "compute_output", "ns"), 1e-3),
    ("nv_cache_num_hits_per_model", "Number of response cache hits per model",
     ("inference_stats", "cache_hit", "count"), 1),
    ("nv_cache_num_misses_per_model", "Number of response cache misses per model",
     ("inference_stats", "cache_miss", "count"), 1),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
     ("inference_stats", "cache_hit", "ns"), 1e-3),
    ("nv_cache_miss_duration_per_model", "Total cache miss (lookup) duration per model, in microseconds",
     ("inference_stats", "cache_miss", "ns"), 1e-3),
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


def render_metrics(server: Server) -> bytes:
    """The server's metrics in the Prometheus text exposition format (version 0.0.4)."""
    stats = server.statistics()["model_stats"]
    lines: list[str] = []
    for name, doc, path, scale in _COUNTERS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        for entry in stats:
            labels = {"model": entry["name"], "version": entry["version"]}
            lines.append(_sample(name, labels, _lookup(entry, path) * scale))
        if name == "nv_inference_request_success":
            lines += _failures(stats)
    name = "nv_inference_pending_request_count"
    lines += [f"# HELP {name} Instantaneous number of pending requests awaiting execution per-model.",
              f"# TYPE {name} gauge"]
    for entry in stats:
        labels = {"model": entry["name"], "version": entry["version"]}
        lines.append(_sample(name, labels, float(entry.get("pending_request_count", 0))))
    for name, doc, path, scale in _STEP_COUNTERS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        for entry in stats:
            for step in entry.get("steps", ()):
                labels = {"pipeline": entry["name"], "version": entry["version"], "step": step["name"],
                          "model": step["model"]}
                lines.append(_sample(name, labels, _lookup(step, path) * scale))
    for name, doc, key, scale in _REMOTE_COUNTERS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        for entry in stats:
            for endpoint, counts in (entry.get("remote_endpoints") or {}).items():
                labels = {"model": entry["name"], "version": entry["version"], "endpoint": endpoint}
                lines.append(_sample(name, labels, float(counts[key]) * scale))
    return ("\n".join(lines) + "\n").encode()


def _failures(stats: list[dict[str, Any]]) -> list[str]:
    """``nv_inference_request_failure`` by Triton's ``reason`` label (every reason, as Triton
    creates them all for each model). Requests refused by validation are not counted."""
    name = "nv_inference_request_failure"
    lines = [f"# HELP {name} Number of failed inference requests, all batch sizes", f"# TYPE {name} counter"]
    for entry in stats:
        reasons = entry.get("failure_reasons") or {}
        for reason in FAILURE_REASONS:
            labels = {"model": entry["name"], "reason": reason, "version": entry["version"]}
            lines.append(_sample(name, labels, float(reasons.get(reason, 0))))
    return lines


def _lookup(entry: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = entry
    for key in path:
        value = value[key]
    return float(value)


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value!r}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def create_metrics_app(server: Server) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(render_metrics(server), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/metrics", metrics)])


async def serve_metrics(
    server: Server, *, host: str, port: int, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` until cancelled; reports the bound port through ``task_status``."""
    await serve_app(create_metrics_app(server), host=host, port=port, task_status=task_status)
