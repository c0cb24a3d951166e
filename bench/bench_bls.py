"""BLS in process: what one chain of three BLS calls costs, without HTTP or a client.

    python bench/bench_bls.py [--seconds 2] [--execution thread,inline]

Serves bench/repos/triton_bls (preprocess -> classifier -> postprocess called by a Python
model through BLS: ``classify_bls`` with blocking ``.exec()``, ``classify_bls_async`` with
``await ....async_exec()``) and bench/repos/triton_ensemble's ``classify`` (the same chain as an
ensemble), and calls each through ``Server.infer`` one request at a time. Prints per request
the wall time (what bounds throughput while a BLS model's one instance is held by a request, on
Triton as here) and the process CPU time (every thread of the server), per
``--python-execution`` value (where the steps run). Wall time on a shared machine is noisy: run
it twice, compare medians.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import numpy as np

from dagserve import InferRequest, Server, ServerOptions

ROOT = Path(__file__).resolve().parents[1]
BLS = ROOT / "bench" / "repos" / "triton_bls"
MODELS = ("classify_bls", "classify_bls_async")


async def sequential(call: Callable[[], Awaitable[object]], seconds: float) -> tuple[float, float]:
    """(median wall µs, mean CPU µs) per call, one call at a time, after a warm-up."""
    for _ in range(100):
        await call()
    walls: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    return statistics.median(walls) * 1e6, cpu / len(walls) * 1e6


async def run(execution: str, seconds: float) -> None:
    raw = InferRequest(inputs={"RAW": np.arange(32, dtype=np.uint8).reshape(1, 32)})
    async with Server(ServerOptions(model_repository=BLS, python_execution=execution)) as server:  # type: ignore[arg-type]
        for model in MODELS:
            wall, cpu = await sequential(lambda model=model: server.infer(model, "", raw), seconds)
            print(f"{execution:6s} {model:20s} wall {wall:7.1f} us/request (median)   CPU {cpu:7.1f} us/request",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--execution", default="thread,inline", help="--python-execution values, comma-separated")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    for execution in args.execution.split(","):
        anyio.run(run, execution, args.seconds)


if __name__ == "__main__":
    main()
