"""Schedulers: how requests of one model version reach its instances.

* :class:`DirectScheduler` (no ``dynamic_batching`` in the config): each request runs as a
  batch of one as soon as an instance is free — Triton's default scheduler.
* :class:`DynamicBatcher`: requests queue; whenever an instance is free, the batch loop asks
  the pure function :func:`decide` whether to send what is queued now or to wait a little for
  more, and hands the batch to the instance pool.

Both record per-request statistics (success, failure, queue time); the pool records the
per-execution ones. A caller cancelled while its request is queued removes it from the queue;
one cancelled during execution only discards its result: the batch loop never breaks.
Priorities, queue policies and timeouts live in :mod:`.queue`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from ..backends.base import ModelInstance, Outputs
from ..errors import OverloadedError, RequestCancelledError, RequestTimeoutError
from ..types import InferRequest
from .instances import ChainCancelled, InstancePool, OffLoop
from .queue import QueuedRequest, RequestQueue
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


class DirectScheduler:
    """Run each request alone on the next free instance."""

    def __init__(self, pool: InstancePool, stats: ModelStatistics) -> None:
        self._pool = pool
        self._stats = stats
        self._waiting = 0  # requests waiting for a free instance on the event loop
        stats.pending = lambda: self._waiting + pool.thread_waiting

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs:
        """Run ``request``; return its outputs or raise its error."""
        start = time.perf_counter_ns()
        instance = self._pool.try_acquire()
        if instance is None:
            self._waiting += 1
            try:
                instance = await self._pool.acquire()
            except anyio.get_cancelled_exc_class():  # the caller went away while waiting
                self._stats.record_failure(total_ns=time.perf_counter_ns() - start, reason="CANCELED")
                raise
            finally:
                self._waiting -= 1
        return await _run_alone(self._pool, self._stats, instance, request, batch_size, start)

    def submit_now(self, request: InferRequest, batch_size: int, work: OffLoop) -> Outputs:
        """:meth:`submit` on a worker thread, which waits in line for an instance as
        :meth:`submit` does, then runs the request itself (see :func:`_run_alone_now`).

        Raises:
            ChainCancelled: ``work`` was cancelled while waiting or executing.
        """
        start = time.perf_counter_ns()
        instance = self._pool.acquire_waiting(work)
        if instance is None:
            work.later.append(functools.partial(
                self._stats.record_failure, total_ns=time.perf_counter_ns() - start, reason="CANCELED"
            ))
            raise ChainCancelled
        if work.cancelled:  # handed an instance just as the caller went away
            self._pool.release(instance)
            work.later.append(functools.partial(
                self._stats.record_failure, total_ns=time.perf_counter_ns() - start, reason="CANCELED"
            ))
            raise ChainCancelled
        return _run_alone_now(self._pool, self._stats, instance, request, batch_size, start, work)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background for this scheduler."""
        task_status.started()


class DynamicBatcher:
    """Queue requests and send them to instances in batches.

    With ``preserve_ordering`` responses are released in the order the requests were taken
    from the queue, even when a later batch finishes first on another instance.
    """

    def __init__(
        self,
        pool: InstancePool,
        stats: ModelStatistics,
        policy: BatchPolicy,
        queue: RequestQueue,
        *,
        preserve_ordering: bool = False,
    ) -> None:
        self._pool = pool
        self._stats = stats
        self._policy = policy
        self._queue = queue
        self._arrived = anyio.Event()
        self._ordered = preserve_ordering
        self._sequence = 0  # batches taken so far
        self._released = 0  # batches whose responses went out, with preserve_ordering
        self._finished: dict[int, list[QueuedRequest]] = {}
        # The direct path keeps Triton's semantics only when a batch would not wait for more
        # requests and responses need not keep the order of other instances' batches. With no
        # queue delay, preferred batch sizes never make a batch wait (decide() sends what is
        # queued at once), so they do not rule it out.
        self._direct = policy.max_queue_delay == 0 and not preserve_ordering
        stats.pending = queue.__len__

    def statistics(self) -> dict[str, int]:
        return {"queued": len(self._queue)}

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs:
        """Queue ``request`` and wait for its outputs.

        Raises:
            OverloadedError: the request's priority level already holds ``max_queue_size``.
            RequestTimeoutError: its queue policy rejects it after its timeout while still queued.
            InvalidInputError: a bad ``priority`` parameter.
        """
        # Everything that can refuse the request runs before an instance or a queue entry is
        # taken for it, so a refusal never holds either.
        level = self._queue.level_of(request)
        policy = self._queue.policies[level]
        timeout = policy.timeout_for(request)
        if self._direct and not len(self._queue) and not request.fan_out:
            # Nothing is queued and an instance is idle: with no queue delay to wait for, the
            # batch would be this request alone, so run it here and skip the batch loop's
            # hand-offs (several event-loop turns). Not for the first item of a fan-out: its
            # siblings are being queued right behind it and should share its batch.
            instance = self._pool.try_acquire()
            if instance is not None:
                return await _run_alone(self._pool, self._stats, instance, request, batch_size, time.perf_counter_ns())
        now = anyio.current_time()
        deadline = now + timeout if timeout else math.inf
        start = time.perf_counter_ns()
        item = QueuedRequest(request, batch_size, _shape_key(request), level, start, deadline)
        try:
            self._queue.push(item)
        except OverloadedError as exc:
            self._stats.record_failure(total_ns=time.perf_counter_ns() - start, reason="REJECTED")
            raise OverloadedError(f"model '{self._stats.name}': {exc}") from None
        self._arrived.set()
        try:
            if timeout and not policy.delay_on_timeout:
                with anyio.move_on_after(timeout):
                    await item.done.wait()
                if not item.done.is_set() and not item.started:
                    self._queue.discard(item)
                    self._stats.record_failure(total_ns=time.perf_counter_ns() - start, reason="REJECTED")
                    raise RequestTimeoutError(
                        f"model '{self._stats.name}': request timed out after {timeout * 1e6:.0f} µs in the queue"
                    )
            await item.done.wait()
        except BaseException as exc:
            self._queue.discard(item)  # a cancelled caller leaves the queue at once
            if isinstance(exc, anyio.get_cancelled_exc_class()):  # the caller is gone
                self._stats.record_failure(total_ns=time.perf_counter_ns() - start, reason="CANCELED")
            raise
        assert item.result is not None
        return _settle(item.result, self._stats, start, item.queue_ns)

    def submit_now(self, request: InferRequest, batch_size: int, work: OffLoop) -> Outputs | None:
        """:meth:`submit`'s direct path on a worker thread (see :func:`_run_alone_now`): the
        request runs at once as a batch of one when nothing is queued and an instance is free
        (the batch the batch loop would send, with no queue delay); ``None`` otherwise, so
        the caller submits on the event loop instead.

        Raises:
            InvalidInputError: a bad ``priority`` parameter (as :meth:`submit`).
        """
        level = self._queue.level_of(request)
        self._queue.policies[level].timeout_for(request)
        if not self._direct or len(self._queue) or request.fan_out:
            return None
        start = time.perf_counter_ns()
        instance = self._pool.try_acquire()
        if instance is None:
            return None
        return _run_alone_now(self._pool, self._stats, instance, request, batch_size, start, work)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The batch loop: runs until cancelled, one batch per free instance."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                # Wait for work before taking an instance, so that an idle instance stays
                # free for submit()'s direct path.
                while not len(self._queue):
                    self._arrived = anyio.Event()
                    await self._arrived.wait()
                instance = await self._pool.acquire()
                try:
                    batch = await self._next_batch()
                except BaseException:
                    self._pool.release(instance)
                    raise
                tg.start_soon(self._execute, instance, batch, self._sequence)
                self._sequence += 1

    async def _next_batch(self) -> list[QueuedRequest]:
        while True:
            now = anyio.current_time()
            candidates: list[QueuedRequest] = []
            for item in self._queue.ordered(now):
                if candidates and item.key != candidates[0].key:
                    break
                candidates.append(item)
            if not candidates:
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            age = (time.perf_counter_ns() - candidates[0].enqueued) / 1e9
            decision = decide([i.size for i in candidates], oldest_age=age, policy=self._policy)
            if isinstance(decision, Flush):
                batch = candidates[: decision.count]
                self._queue.take(batch)
                return batch
            self._arrived = anyio.Event()
            with anyio.move_on_after(decision.seconds):
                await self._arrived.wait()

    async def _execute(self, instance: ModelInstance, batch: list[QueuedRequest], sequence: int) -> None:
        """Run ``batch`` on ``instance``, give the instance back, and answer every request of
        the batch, whatever happens (even when this task is cancelled): a request taken from
        the queue is never left waiting, and with ``preserve_ordering`` no later batch is held
        back by this one."""
        started = time.perf_counter_ns()
        results: Sequence[Outputs | BaseException] = ()
        try:
            results = await self._pool.run(instance, [i.request for i in batch], sum(i.size for i in batch))
        except Exception as exc:  # noqa: BLE001 - the execution failed as a whole: each request gets it
            results = [exc] * len(batch)
        finally:
            self._pool.release(instance)
            if len(results) != len(batch):  # cancelled (the model is unloading) or interrupted
                results = [RequestCancelledError(f"model '{self._stats.name}': the batch was cancelled")] * len(batch)
            for item, result in zip(batch, results):
                item.result = result
                item.queue_ns = started - item.enqueued
            self._release(batch, sequence)

    def _release(self, batch: list[QueuedRequest], sequence: int) -> None:
        if not self._ordered:
            for item in batch:
                item.done.set()
            return
        # Release this batch only after every batch taken before it.
        self._finished[sequence] = batch
        while self._released in self._finished:
            for item in self._finished.pop(self._released):
                item.done.set()
            self._released += 1


async def _run_alone(
    pool: InstancePool, stats: ModelStatistics, instance: ModelInstance, request: InferRequest, batch_size: int,
    start: int,
) -> Outputs:
    """Run ``request`` as a batch of one on ``instance`` (taken at ``start``, perf_counter_ns,
    after any queueing), give the instance back, and record the outcome."""
    queue_ns = time.perf_counter_ns() - start
    try:
        result = (await pool.run(instance, [request], batch_size))[0]
    except BaseException as exc:
        stats.record_failure(total_ns=time.perf_counter_ns() - start, error=exc)
        raise
    finally:
        pool.release(instance)
    return _settle(result, stats, start, queue_ns)


def _run_alone_now(
    pool: InstancePool, stats: ModelStatistics, instance: ModelInstance, request: InferRequest, batch_size: int,
    start: int, work: OffLoop,
) -> Outputs:
    """:func:`_run_alone` on a worker thread, which executes the request itself
    (:meth:`InstancePool.run_now`); the statistics go to ``work.later`` for the event loop."""
    later = work.later
    queue_ns = time.perf_counter_ns() - start
    try:
        result = pool.run_now(instance, [request], batch_size, work)[0]
    except BaseException as exc:
        later.append(functools.partial(stats.record_failure, total_ns=time.perf_counter_ns() - start, error=exc))
        raise
    finally:
        pool.release(instance)
    total = time.perf_counter_ns() - start
    if isinstance(result, BaseException):
        later.append(functools.partial(stats.record_failure, total_ns=total, error=result))
        raise result
    later.append(functools.partial(stats.record_success, total_ns=total, queue_ns=queue_ns))
    return result


def _settle(result: Outputs | BaseException, stats: ModelStatistics, start: int, queue_ns: int) -> Outputs:
    total = time.perf_counter_ns() - start
    if isinstance(result, BaseException):
        stats.record_failure(total_ns=total, error=result)
        raise result
    stats.record_success(total_ns=total, queue_ns=queue_ns)
    return result


def _shape_key(request: InferRequest) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Requests may share a batch only if their inputs agree beyond the batch dimension."""
    return tuple((n, a.shape[1:]) for n, a in request.inputs.items())
