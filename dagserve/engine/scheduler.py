"""Schedulers: how requests of one model version reach its instances.

* :class:`DirectScheduler` (no ``dynamic_batching`` in the config): each request runs as a
  batch of one as soon as an instance is free — Triton's default scheduler.
* :class:`DynamicBatcher`: requests queue; whenever an instance is free, the batch loop asks
  the pure function :func:`decide` whether to send what is queued now or to wait a little for
  more, and hands the batch to the instance pool.

Both record per-request statistics (success, failure, queue time); the pool records the
per-execution ones. A caller cancelled while its request is queued removes it from the queue;
one cancelled during execution only discards its result: the batch loop never breaks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ..backends.base import ModelInstance, Outputs
from ..errors import OverloadedError
from ..types import InferRequest
from .instances import InstancePool
from .stats import ModelStatistics

__all__ = ["BatchPolicy", "DirectScheduler", "DynamicBatcher", "Flush", "Wait", "decide"]


@dataclass(frozen=True, slots=True)
class Flush:
    """Send the first ``count`` queued requests as one batch now."""

    count: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Send nothing yet; decide again after ``seconds`` or when a request arrives."""

    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchPolicy:
    """The dynamic batcher's settings, from ``max_batch_size`` and ``dynamic_batching``."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay: float = 0.0
    max_queue_size: int = 0


def decide(sizes: Sequence[int], *, oldest_age: float, policy: BatchPolicy) -> Flush | Wait:
    """Whether to send a batch now, and how many requests to put in it.

    ``sizes`` are the batch sizes of the queued requests that may share a batch (same
    non-batch shapes), oldest first; ``oldest_age`` is how long the first has waited.

    A batch is sent as soon as it is full (the next request would not fit in
    ``max_batch_size``) or reaches the largest preferred size; otherwise the batcher waits for
    more until the oldest request has waited ``max_queue_delay``, then sends the largest
    preferred size it can make, or everything that fits.
    """
    if not sizes:
        return Wait(math.inf)
    total, fit = 0, 0
    preferred_at: dict[int, int] = {}
    for size in sizes:
        if total + size > policy.max_batch_size and fit > 0:
            return Flush(fit)
        total += size
        fit += 1
        preferred_at[total] = fit
    largest = max(policy.preferred_batch_sizes, default=0)
    if largest and total >= largest and largest in preferred_at:
        return Flush(preferred_at[largest])
    if total >= policy.max_batch_size:
        return Flush(fit)
    if oldest_age >= policy.max_queue_delay:
        for size in sorted(policy.preferred_batch_sizes, reverse=True):
            if size in preferred_at:
                return Flush(preferred_at[size])
        return Flush(fit)
    return Wait(policy.max_queue_delay - oldest_age)


class _Item:
    __slots__ = ("request", "size", "key", "enqueued", "done", "result", "cancelled", "queue_ns")

    def __init__(self, request: InferRequest, size: int, key: Any, enqueued: float) -> None:
        self.request = request
        self.size = size
        self.key = key
        self.enqueued = enqueued
        self.done = anyio.Event()
        self.result: Outputs | BaseException | None = None
        self.cancelled = False
        self.queue_ns = 0


class DirectScheduler:
    """Run each request alone on the next free instance."""

    def __init__(self, pool: InstancePool, stats: ModelStatistics) -> None:
        self._pool = pool
        self._stats = stats

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs:
        """Run ``request``; return its outputs or raise its error."""
        start = time.perf_counter_ns()
        instance = await self._pool.acquire()
        queue_ns = time.perf_counter_ns() - start
        try:
            result = (await self._pool.run(instance, [request], batch_size))[0]
        except BaseException:
            self._stats.record_failure(total_ns=time.perf_counter_ns() - start)
            raise
        finally:
            self._pool.release(instance)
        return _settle(result, self._stats, start, queue_ns)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background for this scheduler."""
        task_status.started()


class DynamicBatcher:
    """Queue requests and send them to instances in batches."""

    def __init__(self, pool: InstancePool, stats: ModelStatistics, policy: BatchPolicy) -> None:
        self._pool = pool
        self._stats = stats
        self._policy = policy
        self._queue: deque[_Item] = deque()
        self._arrived = anyio.Event()

    def statistics(self) -> dict[str, int]:
        return {"queued": len(self._queue)}

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs:
        """Queue ``request`` and wait for its outputs.

        Raises:
            OverloadedError: the queue already holds ``max_queue_size`` requests.
        """
        if self._policy.max_queue_size and len(self._queue) >= self._policy.max_queue_size:
            raise OverloadedError(
                f"model '{self._stats.name}': queue is full ({self._policy.max_queue_size} requests)"
            )
        start = time.perf_counter_ns()
        item = _Item(request, batch_size, _shape_key(request), start)
        self._queue.append(item)
        self._arrived.set()
        try:
            await item.done.wait()
        except BaseException:
            item.cancelled = True
            raise
        assert item.result is not None
        return _settle(item.result, self._stats, start, item.queue_ns)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The batch loop: runs until cancelled, one batch per free instance."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                instance = await self._pool.acquire()
                try:
                    batch = await self._next_batch()
                except BaseException:
                    self._pool.release(instance)
                    raise
                tg.start_soon(self._execute, instance, batch)

    async def _next_batch(self) -> list[_Item]:
        while True:
            while self._queue and self._queue[0].cancelled:
                self._queue.popleft()
            if not self._queue:
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            head = self._queue[0]
            sizes = []
            for item in self._queue:
                if item.key != head.key:
                    break
                if not item.cancelled:
                    sizes.append(item.size)
            age = (time.perf_counter_ns() - head.enqueued) / 1e9
            decision = decide(sizes, oldest_age=age, policy=self._policy)
            if isinstance(decision, Flush):
                return self._take(decision.count)
            self._arrived = anyio.Event()
            with anyio.move_on_after(decision.seconds):
                await self._arrived.wait()

    def _take(self, count: int) -> list[_Item]:
        batch: list[_Item] = []
        while len(batch) < count and self._queue:
            item = self._queue.popleft()
            if not item.cancelled:
                batch.append(item)
        return batch

    async def _execute(self, instance: ModelInstance, batch: list[_Item]) -> None:
        started = time.perf_counter_ns()
        results: Sequence[Outputs | BaseException]
        try:
            results = await self._pool.run(instance, [i.request for i in batch], sum(i.size for i in batch))
        except Exception as exc:  # the execution failed as a whole: every request gets the error
            results = [exc] * len(batch)
        finally:
            self._pool.release(instance)
        for item, result in zip(batch, results):
            item.result = result
            item.queue_ns = started - item.enqueued
            item.done.set()


def _settle(result: Outputs | BaseException, stats: ModelStatistics, start: int, queue_ns: int) -> Outputs:
    total = time.perf_counter_ns() - start
    if isinstance(result, BaseException):
        stats.record_failure(total_ns=total)
        raise result
    stats.record_success(total_ns=total, queue_ns=queue_ns)
    return result


def _shape_key(request: InferRequest) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Requests may share a batch only if their inputs agree beyond the batch dimension."""
    return tuple((n, a.shape[1:]) for n, a in request.inputs.items())
