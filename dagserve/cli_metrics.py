"""The metrics flags of ``dagserve serve``, named as ``tritonserver`` names them.

``--allow-metrics``, ``--allow-gpu-metrics``, ``--allow-cpu-metrics``,
``--metrics-interval-ms`` and ``--metrics-config <setting>=<value>`` (repeatable). Every flag
reads ``DAGSERVE_<FLAG>`` from the environment when not given (``DAGSERVE_METRICS_CONFIG``
holds settings separated by spaces). ``cli.build_parser`` calls :func:`add_arguments`;
``cli._serve`` spreads :func:`server_options` into ``ServerOptions`` and :func:`serve_options`
into ``FrontendOptions``. See docs/metrics.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_security import env, parse_bool
from .engine.latency import MetricsConfig

__all__ = ["add_arguments", "metrics_port", "serve_options", "server_options"]


def _interval(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of milliseconds, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the metrics flags to the ``serve`` sub-parser."""
    g = parser.add_argument_group("metrics (docs/metrics.md)")
    g.add_argument("--allow-metrics", type=parse_bool, default=parse_bool(env("allow-metrics", "true") or "true"),
                   help="serve Prometheus metrics on --metrics-port (default true; false is --metrics-port -1)")
    g.add_argument("--allow-gpu-metrics", type=parse_bool,
                   default=parse_bool(env("allow-gpu-metrics", "true") or "true"),
                   help="GPU gauges via NVML when a GPU and nvidia-ml-py are present (default true)")
    g.add_argument("--allow-cpu-metrics", type=parse_bool,
                   default=parse_bool(env("allow-cpu-metrics", "true") or "true"),
                   help="CPU utilization and memory gauges from /proc (default true)")
    g.add_argument("--metrics-interval-ms", type=_interval,
                   default=_interval(env("metrics-interval-ms", "2000") or "2000"),
                   help="how often CPU and GPU gauges are polled, in milliseconds (default 2000)")
    g.add_argument("--metrics-config", action="append", default=None, metavar="SETTING=VALUE",
                   help="counter_latencies, histogram_latencies, summary_latencies=true|false, "
                        "summary_quantiles=Q:E,..., summary_max_age=SECS, summary_age_buckets=N (repeatable)")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``ServerOptions``: the parsed ``--metrics-config``.

    Raises:
        ConfigError: a malformed or unknown setting (the CLI reports it as a usage error).
    """
    given = args.metrics_config if args.metrics_config is not None else (env("metrics-config", "") or "").split()
    return {"metrics_config": MetricsConfig.parse(given)}


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``FrontendOptions``."""
    return {
        "allow_cpu_metrics": args.allow_cpu_metrics,
        "allow_gpu_metrics": args.allow_gpu_metrics,
        "metrics_interval_ms": args.metrics_interval_ms,
    }


def metrics_port(args: argparse.Namespace) -> int | None:
    """``--metrics-port``, or None (disabled) under ``--allow-metrics false``, as Triton."""
    return args.metrics_port if args.allow_metrics else None

