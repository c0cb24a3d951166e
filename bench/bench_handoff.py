"""What it costs to run a small sync model off the event loop: five ways to hand a call to a thread.

    python bench/bench_handoff.py [--seconds 3] [--model-us 70] [--loop-us 60]

Each simulated request does ``--loop-us`` of Python work on the event loop (what a frontend
spends decoding and encoding), then runs a ``--model-us`` sync "model" (pure Python, holding the
GIL) on one instance (one call at a time), at concurrency 1 and 16. The model runs:

* ``inline``: on the loop itself (the lower bound; blocks everything while it runs);
* ``anyio``: ``anyio.to_thread.run_sync`` behind a ``CapacityLimiter(1)`` (dagserve before);
* ``executor``: ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor``;
* ``worker``: one dedicated thread fed by a ``queue.SimpleQueue``, answering through
  ``loop.call_soon_threadsafe`` on a future (what ``dagserve.engine.instances`` does now);
* ``pipelined``: the same thread, but fed directly by every caller (no instance semaphore on the
  loop): it runs queued calls back to back and returns a run of results in one wake-up.

Each is also run with the interpreter's switch interval at 5 ms (CPython's default) and 0.5 ms:
a thread woken while the loop holds the GIL waits up to one interval for it. Prints calls/s and
the process CPU time per call, and what each mode adds to ``inline``'s CPU per call (the CPU
figure moves far less than the rate when other processes load the machine).
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


def _calibrate() -> float:
    """Loop iterations per microsecond of this interpreter (best of a few tries)."""
    best = 0.0
    for _ in range(5):
        n = 200_000
        start = time.perf_counter()
        for _ in range(n):
            pass
        best = max(best, n / ((time.perf_counter() - start) * 1e6))
    return best


PER_US = _calibrate()


def spin(us: float) -> None:
    """A fixed amount of Python work (about ``us`` microseconds on an idle core)."""
    for _ in range(int(us * PER_US)):
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


class PipelinedWorker(Worker):
    """A worker fed directly by every caller (no instance semaphore on the loop): it runs queued
    calls back to back and hands a run of results back in one ``call_soon_threadsafe``."""

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            done = []
            while job is not None:
                fn, future = job
                done.append((future, fn()))
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    job = None
            self._loop.call_soon_threadsafe(_resolve_all, done)


def _resolve_all(done: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in done:
        _resolve(future, result)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


async def measure(mode: str, concurrency: int, seconds: float, model_us: float, loop_us: float) -> tuple[float, float]:
    """Calls per second, and process CPU microseconds per call."""
    loop = asyncio.get_running_loop()
    model = lambda: spin(model_us)
    instance = asyncio.Semaphore(1)
    limiter = anyio.CapacityLimiter(1)
    executor = ThreadPoolExecutor(1)
    worker = Worker(loop)
    pipelined = PipelinedWorker(loop)

    async def run() -> None:
        if mode == "inline":
            model()
        elif mode == "anyio":
            await anyio.to_thread.run_sync(model, limiter=limiter)
        elif mode == "executor":
            await loop.run_in_executor(executor, model)
        elif mode == "worker":
            await worker.call(model)
        else:
            await pipelined.call(model)

    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            spin(loop_us / 2)
            if mode == "pipelined":
                await run()
            else:
                async with instance:
                    await run()
            spin(loop_us / 2)
            await asyncio.sleep(0)
            done += 1

    start = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rate = done / (time.perf_counter() - start)
    cpu_us = (time.process_time() - cpu) / done * 1e6
    executor.shutdown()
    worker.close()
    pipelined.close()
    return rate, cpu_us


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
                     for m in ("inline", "anyio", "executor", "worker", "pipelined")}
            base_cpu = rates["inline"][1]
            line = "  ".join(f"{m} {r:5.0f}/s {c:4.0f} us CPU (+{c - base_cpu:3.0f})" for m, (r, c) in rates.items())
            print(f"switch {interval * 1e3:.1f} ms  c={concurrency:<2d}  {line}", flush=True)
    sys.setswitchinterval(default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
