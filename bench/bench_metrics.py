"""The cost of one /metrics scrape: dagserve's writer vs prometheus_client's on the same samples.

Serves N copies of a batching model with every latency metric on (histograms and summaries),
sends each a few requests, then times render_metrics() (statistics snapshot + text) and, for
the text step alone, prometheus_client.generate_latest over the same families (when
prometheus_client is importable). Prints milliseconds per scrape and the size of the text.

    python bench/bench_metrics.py [--models 100] [--repeat 50]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import numpy as np

import dagserve
from dagserve.engine.latency import MetricsConfig
from dagserve.frontends.metrics import render_metrics


async def main(models: int, repeat: int) -> None:
    config = {"max_batch_size": 8, "dynamic_batching": {},
              "inputs": [{"name": "X", "datatype": "FP32", "shape": [2]}],
              "outputs": [{"name": "Y", "datatype": "FP32", "shape": [2]}]}
    options = dagserve.ServerOptions(metrics_config=MetricsConfig(histogram_latencies=True, summary_latencies=True))
    async with dagserve.Server(options) as server:
        for i in range(models):
            await server.add_model(f"m{i}", lambda inputs: {"Y": inputs["X"] * 2}, config)
        request = dagserve.InferRequest(inputs={"X": np.ones((1, 2), np.float32)})
        for i in range(models):
            for _ in range(5):
                await server.infer(f"m{i}", "", request)
        start = time.perf_counter()
        for _ in range(repeat):
            text = render_metrics(server)
        ours = (time.perf_counter() - start) / repeat
        print(f"{models} models: render_metrics {ours * 1e3:.2f} ms per scrape, {len(text)} bytes")
        try:
            from prometheus_client.core import Metric
            from prometheus_client.exposition import generate_latest
            from prometheus_client.registry import Collector, CollectorRegistry
        except ImportError:
            print("prometheus_client not installed: no comparison")
            return
        families: list[Metric] = []
        current = None
        for line in text.decode().splitlines():
            if line.startswith("# HELP"):
                continue
            if line.startswith("# TYPE"):
                _, _, name, kind = line.split()
                current = Metric(name, "help", kind)
                families.append(current)
                continue
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            assert match and current is not None
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            current.add_sample(match.group(1), labels, float(match.group(3)))

        class Fixed(Collector):
            def collect(self):  # type: ignore[no-untyped-def]
                return families

        registry = CollectorRegistry()
        registry.register(Fixed())
        start = time.perf_counter()
        for _ in range(repeat):
            generate_latest(registry)
        theirs = (time.perf_counter() - start) / repeat
        print(f"prometheus_client.generate_latest, text step alone: {theirs * 1e3:.2f} ms per scrape "
              f"(x{theirs / ours:.2f} of dagserve's whole scrape)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.models, args.repeat))
