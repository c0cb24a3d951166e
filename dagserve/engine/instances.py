"""The pool of loaded instances of one model version, and how a batch runs on one.

Instances run concurrently with each other, one batch at a time each. Blocking backends run in
worker threads behind a capacity limiter sized by the instance count (not anyio's shared default
pool), so one slow model cannot starve the threads of another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio

from ..backends.base import ModelInstance, Outputs
from ..errors import ModelExecutionError
from ..types import InferRequest
from .stats import ModelStatistics

__all__ = ["INLINE_BUDGET_NS", "InstancePool"]

log = logging.getLogger("dagserve.engine")

INLINE_BUDGET_NS = 5_000_000
"""Longest an adaptive instance may hold the event loop in one call before it is moved to a
worker thread (5 ms)."""


class InstancePool:
    """Free instances of one model version, handed out one at a time."""

    def __init__(self, instances: Sequence[ModelInstance], stats: ModelStatistics) -> None:
        if not instances:
            raise ValueError("a pool needs at least one instance")
        self.instances = tuple(instances)
        # An async instance may take several calls at once (``concurrency``, e.g. a remote
        # model's connection limit): it is handed out that many times.
        self._free = [i for i in instances for _ in range(max(1, int(getattr(i, "concurrency", 1))))]
        self._available = anyio.Semaphore(len(self._free))
        self._threads = anyio.CapacityLimiter(len(instances))
        self._stats = stats
        self._ran: set[int] = set()  # ids of inline instances already over budget once

    async def acquire(self) -> ModelInstance:
        """Wait for a free instance and take it; give it back with :meth:`release`.

        A free instance is taken without yielding to the event loop: on the hot path of an
        idle model (and of every pipeline hop) a yield costs a whole loop turn.
        """
        try:
            self._available.acquire_nowait()
        except anyio.WouldBlock:
            await self._available.acquire()
        return self._free.pop()

    def try_acquire(self) -> ModelInstance | None:
        """A free instance, taken at once, or ``None`` when all are busy."""
        try:
            self._available.acquire_nowait()
        except anyio.WouldBlock:
            return None
        return self._free.pop()

    def release(self, instance: ModelInstance) -> None:
        self._free.append(instance)
        self._available.release()

    async def run(self, instance: ModelInstance, requests: Sequence[InferRequest], batch_size: int) -> Sequence[Outputs | BaseException]:
        """Execute one batch on ``instance``: one result (outputs or error) per request.

        Raises:
            ModelExecutionError: the backend broke its contract (wrong number of results).
        """
        start = time.perf_counter_ns()
        if instance.mode == "thread":
            results = await anyio.to_thread.run_sync(instance.execute, requests, limiter=self._threads)
        elif instance.mode == "async":
            results = await instance.execute(requests)
        else:
            results = instance.execute(requests)
        infer_ns = time.perf_counter_ns() - start
        if (
            instance.mode == "inline"
            and infer_ns > INLINE_BUDGET_NS
            and getattr(instance, "adaptive", False)
            and self._seen(instance)  # one slow call is forgiven: first calls pay one-off costs
        ):
            # This call held the event loop (and every other request) too long: from now on
            # the instance runs in a worker thread.
            instance.mode = "thread"
            log.info("model '%s': execute took %.1f ms on the event loop; moving it to a worker thread",
                     self._stats.name, infer_ns / 1e6)
        if len(results) != len(requests):
            raise ModelExecutionError(
                f"model '{self._stats.name}': backend returned {len(results)} results for {len(requests)} requests"
            )
        split = getattr(instance, "compute_split", None)  # (input_ns, output_ns) a backend measured
        self._stats.record_execution(batch_size=batch_size, requests=len(requests), infer_ns=infer_ns, split=split)
        return results

    def _seen(self, instance: ModelInstance) -> bool:
        """Whether ``instance`` was over budget before (and remember that it has been now)."""
        key = id(instance)
        if key in self._ran:
            return True
        self._ran.add(key)
        return False

    def close(self) -> None:
        """Close every instance (blocking; call from a worker thread)."""
        for instance in self.instances:
            instance.close()
