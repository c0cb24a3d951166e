"""A torch CNN served by dagserve with dynamic batching vs the same model called directly.

1. **Direct**: the module called in a loop at batch sizes 1..max, host input copied in and the
   output copied back each call (what serving must do too); the best batch size's throughput
   is the ceiling.
2. **Served**: the same module (a ``model.py`` for the pytorch backend) in an in-process
   ``Server`` with ``dynamic_batching``, hit by many concurrent tasks each sending one image
   per request (``Server.infer``, no network), outputs copied to host at the edge
   (``to_host``) as a frontend would. ``--served`` lists the variants to run, each
   ``INSTANCES:OUTPUT_MEMORY[:IN_FLIGHT]`` (instances of the model; ``device`` or ``host``
   outputs; the ``batches_in_flight`` parameter, else the backend's default).

Prints both throughputs and dagserve's share of the direct one, with request latencies.

Models: ``small`` (a 3-layer CNN on 3x32x32, CPU default), ``resnet50`` (torchvision, random
weights, 3x224x224; needs torchvision) or ``large`` (an inline 8-layer CNN on 3x128x128, for
GPUs without torchvision).

Run: python bench/bench_torch.py                              # CPU, small CNN, < 1 minute
     python bench/bench_torch.py --device cuda --model resnet50 --concurrency 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import torch

from dagserve import InferRequest, Server
from dagserve.types import to_host

MODEL_FILE = '''
import torch
from torch import nn


def create_model():
    torch.manual_seed(0)
    kind = "{kind}"
    if kind == "resnet50":
        import torchvision
        return torchvision.models.resnet50(weights=None)
    if kind == "small":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(64, 10),
        )
    layers, channels = [], 3
    for width in (64, 64, 128, 128, 256, 256, 512, 512):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if width == channels:
            layers.append(nn.MaxPool2d(2))
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))
'''

SHAPES = {"small": (3, 32, 32), "resnet50": (3, 224, 224), "large": (3, 128, 128)}
CLASSES = {"small": 10, "resnet50": 1000, "large": 1000}


def write_repo(
    repo: Path, kind: str, device: str, max_batch: int, delay_us: int, precision: str, instances: int, memory: str,
    in_flight: str = "",
) -> None:
    model_dir = repo / "cnn"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(MODEL_FILE.replace("{kind}", kind))
    c, h, w = SHAPES[kind]
    group = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    flight = f'parameters {{ key: "batches_in_flight" value: {{ string_value: "{in_flight}" }} }}\n' if in_flight else ""
    (model_dir / "config.pbtxt").write_text(f"""
backend: "pytorch"
max_batch_size: {max_batch}
input [{{ name: "images" data_type: TYPE_FP32 dims: [{c}, {h}, {w}] }}]
output [{{ name: "logits" data_type: TYPE_FP32 dims: [{CLASSES[kind]}] }}]
instance_group [{{ kind: {group} count: {instances} }}]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} preferred_batch_size: [{max_batch}] }}
parameters {{ key: "precision" value: {{ string_value: "{precision}" }} }}
parameters {{ key: "output_memory" value: {{ string_value: "{memory}" }} }}
{flight}model_warmup [{{ name: "full" batch_size: {max_batch} count: 3
  inputs {{ key: "images" value: {{ data_type: TYPE_FP32 dims: [{c}, {h}, {w}] random_data: true }} }} }}]
""")


def build(kind: str, device: str, precision: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(MODEL_FILE.replace("{kind}", kind), namespace)  # noqa: S102 - our own source, above
    model = namespace["create_model"]().to(device).eval()
    if precision == "fp16":
        model = model.half()
    elif precision == "bf16":
        model = model.to(torch.bfloat16)
    return model


def direct(kind: str, device: str, precision: str, sizes: list[int], seconds: float) -> dict[int, float]:
    """Images/s of the module called directly at each batch size, host copies included."""
    model = build(kind, device, precision)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    results = {}
    with torch.inference_mode():
        for size in sizes:
            batch = np.random.default_rng(0).random((size, *SHAPES[kind]), dtype=np.float32)
            pinned = torch.empty(batch.shape, pin_memory=device == "cuda")

            for _ in range(3):
                _direct_call(model, batch, pinned, device, dtype)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                _direct_call(model, batch, pinned, device, dtype)
                count += size
            results[size] = count / (time.perf_counter() - start)
    return results


def _direct_call(model: Any, batch: np.ndarray, pinned: Any, device: str, dtype: Any) -> None:
    # What serving does per batch: host rows into pinned memory, one DMA in, forward, copy out.
    pinned.numpy()[...] = batch
    x = pinned.to(device, non_blocking=True).to(dtype)
    to_host(model(x).float())


async def served(repo: Path, kind: str, concurrency: int, seconds: float) -> tuple[float, list[float], dict[str, Any]]:
    """Images/s and latencies of single-image requests from ``concurrency`` tasks."""
    async with Server(model_repository=repo) as server:
        image = np.random.default_rng(1).random((1, *SHAPES[kind]), dtype=np.float32)
        request = InferRequest(inputs={"images": image})
        for _ in range(3):
            to_host((await server.infer("cnn", "", request)).outputs["logits"])
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                response = await server.infer("cnn", "", request)
                to_host(response.outputs["logits"])
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(client)
        elapsed = time.perf_counter() - start
        stats = server.statistics("cnn")["model_stats"][0]
    return len(latencies) / elapsed, latencies, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="small", choices=list(SHAPES))
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="served run length")
    parser.add_argument("--direct-seconds", type=float, default=1.0, help="per batch size")
    parser.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--served", default="1:device", help="variants INSTANCES:device|host[:IN_FLIGHT], comma-separated")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, for both runs (0: torch's default); 1 keeps a "
                             "shared or busy CPU from collapsing under OpenMP spin-waits")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256) if s <= args.max_batch]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.model} {SHAPES[args.model]} {args.precision} on {device_name}, torch {torch.__version__}")

    rates = direct(args.model, args.device, args.precision, sizes, args.direct_seconds)
    best = max(rates, key=lambda s: rates[s])
    print("direct, images/s by batch size: " + ", ".join(f"{s}: {r:,.0f}" for s, r in rates.items()))
    print(f"direct best: {rates[best]:,.0f} images/s at batch {best}")

    for variant in args.served.split(","):
        instances, memory, in_flight = (variant.split(":") + [""])[:3]
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp)
            write_repo(repo, args.model, args.device, args.max_batch, args.delay_us, args.precision,
                       int(instances), memory, in_flight)
            rate, latencies, stats = anyio.run(served, repo, args.model, args.concurrency, args.seconds)
        batches = stats["execution_count"]
        mean_batch = stats["inference_count"] / batches if batches else 0.0
        latencies.sort()
        p50 = statistics.median(latencies) * 1e3
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1e3 if latencies else 0.0
        flight = f", {in_flight} batches in flight" if in_flight else ""
        print(f"served ({instances} instance(s), {memory} outputs{flight}): {rate:,.0f} images/s at concurrency "
              f"{args.concurrency} (1 image/request, mean batch {mean_batch:.1f}, max {args.max_batch}); "
              f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
              f"dagserve share of direct throughput: {rate / rates[best]:.0%}")


if __name__ == "__main__":
    main()
