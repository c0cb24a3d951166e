"""Prometheus metrics on their own port, with Triton's ``nv_inference_*`` names and labels.

Core code never creates Prometheus objects: a collector reads the server's statistics
snapshots on each scrape, so existing Triton dashboards work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..engine import Server
from .asgi import serve_asgi

__all__ = ["ServerCollector", "create_metrics_app", "serve_metrics"]

# (metric name, help, where it comes from in a statistics snapshot, scale)
_COUNTERS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     ("inference_stats", "success", "count"), 1),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     ("inference_stats", "fail", "count"), 1),
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


class ServerCollector:
    """A Prometheus collector reading a :class:`Server`'s statistics at scrape time."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        stats = self._server.statistics()["model_stats"]
        for name, doc, path, scale in _COUNTERS:
            metric = Metric(name, doc, "counter")
            for entry in stats:
                value: Any = entry
                for key in path:
                    value = value[key]
                labels = {"model": entry["name"], "version": entry["version"]}
                metric.add_sample(name, labels, value * scale)
            yield metric


def create_metrics_app(server: Server) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))  # type: ignore[arg-type]

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/metrics", metrics)])


async def serve_metrics(
    server: Server, *, host: str, port: int, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` until cancelled; reports the bound port through ``task_status``."""
    await serve_asgi(create_metrics_app(server), host=host, port=port, task_status=task_status)
