"""The pool of loaded instances of one model version, and how a batch runs on one.

Instances run concurrently with each other, one batch at a time each. An instance whose
``execute`` blocks (``mode == "thread"``: every sync Python model by default, torch, ONNX
Runtime) runs it on a thread of its own (:class:`InstanceThread`), so a model that blocks — a
sleep, a long C call, a lock — holds only its own thread: the event loop keeps answering
health, metrics and every other model. The threads of a pool are its capacity: one call per
instance at a time, never more threads than instances, none shared with another model.

An ``inline`` instance runs on the event loop, by the user's explicit choice; the pool never
changes an instance's mode. A call that holds the loop longer than :data:`INLINE_WARN_NS` is
logged (at most once a minute per model) so that an operator sees which model to move.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ..backends.base import ModelInstance, Outputs
from ..errors import ModelExecutionError, ModelNotReadyError
from ..tracing.context import CURRENT as _TRACE
from ..tracing.context import Span
from ..types import InferRequest
from .stats import ModelStatistics

__all__ = ["INLINE_WARN_NS", "ChainCancelled", "InstancePool", "InstanceThread", "OffLoop"]

log = logging.getLogger("dagserve.engine")

INLINE_WARN_NS = 10_000_000
"""An ``inline`` call holding the event loop longer than this (10 ms) is logged as a warning;
its mode does not change."""

_WARN_EVERY_NS = 60_000_000_000

class OffLoop:
    """A request's work done on a worker thread rather than the event loop (:mod:`.chain`).

    ``later``: the statistics it made, as calls for the event loop to make when the work is
    done (statistics are written by the event loop only). :meth:`cancel` (from the event
    loop) says the request's caller is gone: the work stops at its next check of
    :attr:`cancelled`, and a wait for an instance (:meth:`InstancePool.acquire_waiting`) ends.
    """

    __slots__ = ("cancelled", "later", "wake")

    def __init__(self) -> None:
        self.later: list[Callable[[], None]] = []
        self.cancelled = False
        self.wake = threading.Event()

    def cancel(self) -> None:
        self.cancelled = True
        self.wake.set()


class ChainCancelled(asyncio.CancelledError):
    """Raised on a worker thread when the caller of the work it runs was cancelled; it counts
    as a cancellation wherever a failure reason is derived from it."""


class _ThreadWaiter:
    """A worker thread in an :class:`InstancePool`'s line of waiters."""

    __slots__ = ("instance", "wake")

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.instance: ModelInstance | None = None


_Job = tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context, asyncio.Future[Any], asyncio.AbstractEventLoop]


class InstanceThread:
    """The one thread that runs one instance's blocking calls, in the order they are submitted.

    Cheaper than a shared pool: a call is one ``SimpleQueue.put`` to wake the thread and one
    ``call_soon_threadsafe`` to hand the result back (no capacity-limiter checkpoint, no pool
    bookkeeping), measured in docs/performance.md. The thread starts with the first call and
    ends with :meth:`close`, after the calls submitted before it; a call submitted after
    :meth:`close` fails at once (it would otherwise wait for a thread that is gone). It is a
    daemon thread: a model blocked for ever cannot keep the process from exiting.
    """

    def __init__(self, name: str, owner: str = "model") -> None:
        self.name = name
        self._owner = owner
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Orders submissions against close(): no call can be queued behind the thread's end.
        self._lock = threading.Lock()

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on this thread, in a copy of the caller's context; return its
        result or raise its exception.

        On cancellation the call is not abandoned: this waits for ``func`` to return (as
        ``anyio.to_thread.run_sync`` does), so the instance is never handed out while it is
        still executing, then re-raises the cancellation.

        Raises:
            ModelNotReadyError: :meth:`close` was called (the instance is being unloaded).
        """
        future = self.submit(func, *args)
        try:
            # shield: a cancelled caller must not cancel the future the thread will resolve.
            return await asyncio.shield(future)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([future])
            raise

    def submit(self, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``func(*args)`` for this thread, in a copy of the caller's context, and return
        the future of its result (resolved on the calling event loop). The caller must wait for
        it even when cancelled, as :meth:`run` does.

        Raises:
            ModelNotReadyError: :meth:`close` was called.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._closed:
                raise ModelNotReadyError(f"{self._owner}: the instance is unloaded")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._jobs.put((func, args, contextvars.copy_context(), future, loop))
        return future

    def close(self, wait: bool = True) -> None:
        """Refuse new calls, let the thread finish those already submitted, then end it
        (blocking unless ``wait`` is false; idempotent)."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None and wait:
            thread.join()

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            func, args, context, future, loop = job
            del job
            try:
                outcome: list[Any] = [_succeed, context.run(func, *args)]
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                outcome = [_fail, exc]
            # The thread holds nothing of a call while it waits for the next: the call's
            # tensors are free once the caller drops them (a forwarded request's shared buffer
            # is reused only then), and the loop empties ``outcome`` as it hands it over.
            del func, args, context
            _call_soon(loop, _settle, future, outcome)
            del future, loop, outcome


def _settle(future: asyncio.Future[Any], outcome: list[Any]) -> None:
    settle, value = outcome
    outcome.clear()
    settle(future, value)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class _Computes:
    """The ``compute`` spans of one batch execution: one under the span of each traced
    request of the batch (Triton gives each request its own). While it runs with a single
    traced request, its span is the current one, so a BLS call the model makes for that
    request (``async`` code, or sync code, whose thread runs in a copy of this context)
    joins the trace under it."""

    __slots__ = ("spans", "token")

    def __init__(self, model: str, requests: Sequence[InferRequest], batch_size: int) -> None:
        count = len(requests)
        self.spans: list[tuple[int, Span]] = [
            (i, r.trace.compute(model, batch_size, count)) for i, r in enumerate(requests) if r.trace is not None
        ]
        self.token = _TRACE.set(self.spans[0][1]) if len(self.spans) == 1 else None

    def end(self, failure: BaseException | None, results: Sequence[Any]) -> None:
        """End every span: with ``failure``, or each with its request's result if an error."""
        if self.token is not None:
            _TRACE.reset(self.token)
        for i, span in self.spans:
            result = failure if failure is not None else (results[i] if i < len(results) else None)
            span.end(result if isinstance(result, BaseException) else None)


def _concurrency(instance: ModelInstance) -> int:
    return max(1, int(getattr(instance, "concurrency", 1)))


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class InstancePool:
    """Free instances of one model version, handed out one at a time."""

    def __init__(self, instances: Sequence[ModelInstance], stats: ModelStatistics) -> None:
        if not instances:
            raise ValueError("a pool needs at least one instance")
        self.instances = tuple(instances)
        # An instance may take several calls at once (``concurrency``: a remote model's
        # connection limit, a GPU instance that stages one batch while another computes): it
        # is handed out that many times.
        self._free = [i for i in instances for _ in range(_concurrency(i))]
        # Taken and given back on the event loop, and also by the worker thread that runs a
        # pipeline request's chain of steps (:mod:`.chain`): a lock, and waiters served in order.
        self._lock = threading.Lock()
        self._waiters: collections.deque[asyncio.Future[ModelInstance] | _ThreadWaiter] = collections.deque()
        self.thread_waiting = 0
        """Worker threads waiting for an instance now (:meth:`acquire_waiting`)."""
        self.chains = all(i.mode == "thread" and getattr(i, "chain", False) for i in self.instances)
        """Every instance runs blocking Python code that holds the GIL (``thread`` mode, the
        backend's ``chain`` attribute): a pipeline may run it on a chain thread
        (:meth:`run_now`, :mod:`.chain`)."""
        self._stats = stats
        # A ``thread`` instance with ``concurrency`` k has k threads: its free ones, taken and
        # given back on the event loop (the pool hands the instance out at most k times).
        self._threads = {
            id(instance): [
                InstanceThread(f"dagserve-{stats.name}-{i}" + (f".{j}" if j else ""), f"model '{stats.name}'")
                for j in range(_concurrency(instance) if instance.mode == "thread" else 1)
            ]
            for i, instance in enumerate(self.instances)
        }
        self._warned_ns = -_WARN_EVERY_NS
        self.traced = 0
        """Traced requests inside the model now; while 0, :meth:`run` looks for no span."""

    async def acquire(self) -> ModelInstance:
        """Wait for a free instance and take it (callers are served in the order they
        came); give it back with :meth:`release`. Cancelled while waiting, it takes none.

        A free instance is taken without yielding to the event loop: on the hot path of an
        idle model (and of every pipeline hop) a yield costs a whole loop turn.
        """
        with self._lock:
            if self._free and not self._waiters:
                return self._free.pop()
            waiter: asyncio.Future[ModelInstance] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():  # handed one just as it was cancelled
                self.release(waiter.result())
            raise

    def try_acquire(self) -> ModelInstance | None:
        """A free instance, taken at once, or ``None`` when all are busy (or others wait).
        Safe from any thread."""
        with self._lock:
            if self._free and not self._waiters:
                return self._free.pop()
        return None

    def acquire_waiting(self, work: OffLoop) -> ModelInstance | None:
        """On a worker thread: a free instance, waiting in line with the event loop's callers
        of :meth:`acquire` when none is; ``None`` when ``work`` is cancelled first."""
        with self._lock:
            if self._free and not self._waiters:
                return self._free.pop()
            work.wake.clear()
            if work.cancelled:
                return None
            waiter = _ThreadWaiter(work.wake)
            self._waiters.append(waiter)
            self.thread_waiting += 1
        waiter.wake.wait()
        with self._lock:
            self.thread_waiting -= 1
            if waiter.instance is None:  # cancelled: still in line
                self._waiters.remove(waiter)
            return waiter.instance

    def release(self, instance: ModelInstance) -> None:
        """Give ``instance`` back: to the first waiter, else to the free list. Safe from any
        thread (a waiter is then handed the instance on its event loop, or woken on its
        thread)."""
        with self._lock:
            if not self._waiters:
                self._free.append(instance)
                return
            waiter = self._waiters.popleft()
            if isinstance(waiter, _ThreadWaiter):
                waiter.instance = instance
                waiter.wake.set()
                return
        loop = waiter.get_loop()
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._hand(waiter, instance)
        else:
            _call_soon(loop, self._hand, waiter, instance)

    def _hand(self, waiter: asyncio.Future[ModelInstance], instance: ModelInstance) -> None:
        if waiter.done():  # its caller was cancelled meanwhile: the next one gets it
            self.release(instance)
        else:
            waiter.set_result(instance)

    async def run(self, instance: ModelInstance, requests: Sequence[InferRequest], batch_size: int) -> Sequence[Outputs | BaseException]:
        """Execute one batch on ``instance``: one result (outputs or error) per request.

        ``thread`` instances run on their own :class:`InstanceThread`, ``async`` ones are
        awaited and ``inline`` ones called on the event loop.

        Raises:
            ModelExecutionError: the backend broke its contract (wrong number of results).
        """
        # Only while a traced request is inside the model (:meth:`ModelVersion._traced`).
        traced = _Computes(self._stats.name, requests, batch_size) if self.traced else None
        start = time.perf_counter_ns()
        mode = instance.mode
        try:
            if mode == "thread":
                free = self._threads[id(instance)]
                thread = free.pop()
                try:
                    results = await thread.run(instance.execute, requests)
                finally:
                    free.append(thread)
            elif mode == "async":
                results = await instance.execute(requests)
            else:
                results = instance.execute(requests)
        except BaseException as exc:
            if traced is not None:
                traced.end(exc, ())
            raise
        if traced is not None:
            traced.end(None, results)
        infer_ns = time.perf_counter_ns() - start
        if mode == "inline" and infer_ns > INLINE_WARN_NS:
            self._warn_inline(infer_ns)
        if len(results) != len(requests):
            raise ModelExecutionError(
                f"model '{self._stats.name}': backend returned {len(results)} results for {len(requests)} requests"
            )
        split = getattr(instance, "compute_split", None)  # (input_ns, output_ns) a backend measured
        self._stats.record_execution(batch_size=batch_size, requests=len(requests), infer_ns=infer_ns, split=split)
        return results

    def run_now(
        self, instance: ModelInstance, requests: Sequence[InferRequest], batch_size: int, work: OffLoop
    ) -> Sequence[Outputs | BaseException]:
        """:meth:`run` for a ``thread`` instance, called on a worker thread (not the event
        loop) that runs ``instance.execute`` itself, for requests that are not traced. The
        statistics go to ``work.later``. When ``work`` is cancelled during the execution its
        result is dropped, as a cancelled :meth:`run`'s is.

        Raises:
            ModelExecutionError: the backend broke its contract (wrong number of results).
            ChainCancelled: the caller was cancelled while it executed.
        """
        start = time.perf_counter_ns()
        results = instance.execute(requests)
        infer_ns = time.perf_counter_ns() - start
        if work.cancelled:
            raise ChainCancelled
        if len(results) != len(requests):
            raise ModelExecutionError(
                f"model '{self._stats.name}': backend returned {len(results)} results for {len(requests)} requests"
            )
        split = getattr(instance, "compute_split", None)
        work.later.append(functools.partial(
            self._stats.record_execution, batch_size=batch_size, requests=len(requests), infer_ns=infer_ns, split=split
        ))
        return results  # type: ignore[no-any-return]

    def _warn_inline(self, infer_ns: int) -> None:
        now = time.monotonic_ns()
        if now - self._warned_ns < _WARN_EVERY_NS:
            return
        self._warned_ns = now
        log.warning(
            "model '%s' (execution: inline): execute held the event loop for %.1f ms, delaying every "
            "other request, health and metrics; remove 'execution: inline' to run it in a worker thread",
            self._stats.name, infer_ns / 1e6,
        )

    def close(self) -> None:
        """Stop the instances' threads, then close every instance (blocking; call from a worker
        thread once no batch is in flight)."""
        for instance in self.instances:
            for thread in self._threads[id(instance)]:
                thread.close()
            instance.close()
