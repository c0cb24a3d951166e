"""Dynamic batching, measured side by side in one run (in process, no network).

A model costing a fixed 2 ms per call plus 0.05 ms per item (time.sleep in a worker thread,
like a GPU kernel launch plus per-item work) is served:

1. at concurrency 64, with dynamic batching (max_batch_size 32) and without: the throughput
   ratio should approach the batch-size bound (2 ms + 32 x 0.05 ms per 32 items vs 2.05 ms
   per item: about 18x);
2. at concurrency 1, with max_queue_delay 0 and 1 ms: p50/p99 latency (the delay costs up to
   1 ms per request when nothing else arrives).

Run: python bench/bench_batching.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np

from dagserve import InferRequest, Server

MODEL = """
import time
import numpy as np

def infer(inputs):
    x = inputs["X"]
    time.sleep(0.002 + 0.00005 * x.shape[0])
    return {"Y": x + 1}
"""


def write_model(repo: Path, name: str, batching: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(MODEL)
    (repo / name / "config.yaml").write_text(
        "backend: python\nmax_batch_size: 32\nparameters: {execution: thread}\n" + batching
        + "inputs: [{name: X, datatype: FP32, shape: [4]}]\noutputs: [{name: Y, datatype: FP32, shape: [4]}]\n"
    )


async def closed_loop(server: Server, model: str, concurrency: int, seconds: float) -> list[float]:
    request = InferRequest(inputs={"X": np.ones((1, 4), np.float32)})
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await server.infer(model, "", request)
            latencies.append(time.perf_counter() - t0)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return latencies


async def main(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        write_model(repo, "unbatched", "")
        write_model(repo, "batched", "dynamic_batching: {max_queue_delay_microseconds: 0}\n")
        write_model(repo, "delayed", "dynamic_batching: {max_queue_delay_microseconds: 1000}\n")
        async with Server(model_repository=repo) as server:
            rates = {}
            for model in ("unbatched", "batched"):
                lat = await closed_loop(server, model, 64, seconds)
                rates[model] = len(lat) / seconds
                print(f"concurrency 64, {model:9s}: {rates[model]:8.0f} req/s")
            print(f"batched / unbatched throughput: {rates['batched'] / rates['unbatched']:.1f}x "
                  f"(bound ~{(2.05 * 32) / (2 + 32 * 0.05):.1f}x)")
            p = {}
            for model in ("batched", "delayed"):
                lat = np.array(await closed_loop(server, model, 1, seconds)) * 1e3
                p[model] = (np.percentile(lat, 50), np.percentile(lat, 99))
                print(f"concurrency 1, {model:9s}: p50 {p[model][0]:.2f} ms  p99 {p[model][1]:.2f} ms")
            print(f"p50 with 1 ms queue delay / without: {p['delayed'][0] / p['batched'][0]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    anyio.run(main, parser.parse_args().seconds)
