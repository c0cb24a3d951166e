"""What it costs to run a small sync model off the event loop: four ways to hand a call to a thread.

    python bench/bench_handoff.py [--seconds 3] [--model-us 70] [--loop-us 60]

Each simulated request does ``--loop-us`` of Python work on the event loop (what a frontend
spends decoding and encoding), then runs a ``--model-us`` sync "model" (pure Python, holding the
GIL) on one instance (one call at a time), at concurrency 1 and 16. The model runs:

* ``inline``: on the loop itself (the lower bound; blocks everything while it runs);
* ``anyio``: ``anyio.to_thread.run_sync`` behind a ``CapacityLimiter(1)`` (dagserve before);
* ``executor``: ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor``;
* ``worker``: one dedicated thread fed by a ``queue.SimpleQueue``, answering through
  ``loop.call_soon_threadsafe`` on a future (what ``dagserve.engine.instances`` does now).

Each is also run with the interpreter's switch interval at 5 ms (CPython's default) and 0.5 ms:
a thread woken while the loop holds the GIL waits up to one interval for it. Prints requests/s
and each mode's ratio to ``inline``.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread


def spin(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


class Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            result = fn()
            self._loop.call_soon_threadsafe(_resolve, future, result)

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._jobs.put((fn, future))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


async def measure(mode: str, concurrency: int, seconds: float, model_us: float, loop_us: float) -> float:
    loop = asyncio.get_running_loop()
    model = lambda: spin(model_us)
    instance = asyncio.Semaphore(1)
    limiter = anyio.CapacityLimiter(1)
    executor = ThreadPoolExecutor(1)
    worker = Worker(loop)

    async def run() -> None:
        if mode == "inline":
            model()
        elif mode == "anyio":
            await anyio.to_thread.run_sync(model, limiter=limiter)
        elif mode == "executor":
            await loop.run_in_executor(executor, model)
        else:
            await worker.call(model)

    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            spin(loop_us / 2)
            async with instance:
                await run()
            spin(loop_us / 2)
            await asyncio.sleep(0)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rate = done / (time.perf_counter() - start)
    executor.shutdown()
    worker.close()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--model-us", type=float, default=70.0)
    parser.add_argument("--loop-us", type=float, default=60.0)
    args = parser.parse_args()
    default = sys.getswitchinterval()
    for interval in (default, 0.0005):
        sys.setswitchinterval(interval)
        for concurrency in (1, 16):
            rates = {m: asyncio.run(measure(m, concurrency, args.seconds, args.model_us, args.loop_us))
                     for m in ("inline", "anyio", "executor", "worker")}
            line = "  ".join(f"{m} {r:6.0f} (x{r / rates['inline']:.2f})" for m, r in rates.items())
            print(f"switch {interval * 1e3:.1f} ms  c={concurrency:<2d}  {line}", flush=True)
    sys.setswitchinterval(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
