"""Chains: consecutive steps of one pipeline request run on one worker thread.

A step whose member runs blocking code (``execution: thread``, the default for sync Python
models) executes on a thread of the member's instance, so a pipeline of three such steps costs
three round trips between the event loop and worker threads per request: each is two GIL
hand-offs and several context switches, which on a pipeline of short steps cost about as much
as the steps themselves (docs/performance.md). A chain makes one round trip instead: the event
loop hands the request's run of such steps to a chain thread (:class:`ChainWorkers`), which
runs step after step itself — each through the member's own validation, scheduler and
instance pool (:meth:`~.model.ModelVersion.infer_now`) — and hands the request back once.

Each pipeline has a main chain thread, which runs the chains lined up for it one after
another: under load it is woken once for a run of requests, and its chains never contend
with each other for an instance. While its current chain is stuck — it has run
:data:`CHAIN_WAIT` while the process was mostly idle (a step that blocks: a sleep, I/O), or
:data:`CHAIN_LONG` however busy the process (a long step; under load a chain may just be
waiting its turn for the GIL, which more threads would not help) — the chains lined up behind
it are taken back and new ones are not lined up: they run on spare threads, one chain each;
with every spare busy, a request goes step by step on the event loop as without chains.

What stays the same as step by step on the event loop:

* a member without dynamic batching: the chain waits in line for a free instance, with the
  event loop's callers, as its scheduler does; a dynamic batcher's member only runs a batch of
  one taken at once (nothing queued, an instance free, no queue delay): otherwise the chain
  stops there and the event loop goes on from that step (queueing, batching, priorities);
* statistics (the pipeline's, each step's, each member's) are the same; they are collected on
  the thread and recorded by the event loop when the chain hands back;
* errors name the pipeline, step and model, as :meth:`.PipelineRunner._call` does;
* a cancelled request (client gone, pipeline ``timeout``) finishes the step that is
  executing, as a cancelled thread call does, leaves any line at once, and runs no further
  step;
* a model that blocks holds its own instance and the chain thread running it: requests that
  need that model wait for it, as they would anyway; other requests of the pipeline wait
  :data:`CHAIN_WAIT` (:data:`CHAIN_LONG` in a busy process) behind it at most, then run on a
  spare thread. Health, metrics and other models never wait for a chain.

A chain runs only where it cannot change the outcome, from the first step of the route to the
first step that cannot join it: a sequential route of two or more steps, no ``max_inflight_requests``, a request that is not traced, and steps that are plain
calls (not mapped, not looped) of members that :attr:`~.model.ModelVersion.runs_now`: sync
Python that holds the GIL (the backend's ``chain`` attribute), which could not overlap with
other steps anyway; torch, ONNX Runtime and process-isolated steps release it and keep their
own threads, so that concurrent requests still overlap across their steps. What an
author of model code may notice: a member's ``execute`` runs on a chain thread rather than
always the same thread of its instance (still one call at a time per instance).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..dsl.plan import StepPlan
from ..errors import DagserveError
from ..types import InferRequest
from .instances import ChainCancelled, InstanceThread, OffLoop

if TYPE_CHECKING:
    from .model import ModelVersion
    from .pipeline_runner import PipelineRunner, StepStatistics

__all__ = ["CHAIN_LONG", "CHAIN_WAIT", "SPARE_THREADS", "ChainWorkers", "run_chain"]

CHAIN_WAIT = 0.002
"""Seconds a chain may run on the main chain thread before the chains lined up behind it, and
new ones, go to spare threads instead, if meanwhile the process was mostly idle (a model that
blocks: as step by step, they overlap with it)."""

CHAIN_LONG = 0.02
"""Seconds after which a chain is stuck however busy the process (a long step, or one that
blocks while other requests keep the CPU busy). Four of CPython's default switch intervals: a
chain that only waits its turn for the GIL gets it well before."""

SPARE_THREADS = 16
"""Spare chain threads per pipeline at most; with every one busy a request goes step by step."""

_REVOKED = -1
_CHAIN_WAIT_NS = CHAIN_WAIT * 1e9
_CHAIN_LONG_NS = CHAIN_LONG * 1e9


class ChainWorkers:
    """The threads that run one pipeline's chains: the main one, which runs the chains lined
    up for it one after another (it is woken once for a run of them, and no two of them
    contend for an instance), and spares, one chain at a time each, started as needed up to
    ``spares``, for while the main one is stuck. Used on the event loop only, but for
    :attr:`main_since`, which the main thread writes."""

    def __init__(self, name: str, spares: int = SPARE_THREADS) -> None:
        self._name = name
        self._limit = spares
        self._main: InstanceThread | None = None
        self.main_since = 0
        """perf_counter_ns when the main thread's current chain began; 0 between chains."""
        self.main_cpu_since = 0
        """The process's CPU time (process_time_ns) when that chain began."""
        self._idle: list[InstanceThread] = []
        self._spares: list[InstanceThread] = []

    def stuck(self) -> bool:
        """Whether the main thread's current chain is stuck: it has run :data:`CHAIN_LONG`,
        or :data:`CHAIN_WAIT` while the process used the CPU less than half the time — its
        thread blocks (a sleep, I/O, a lock). A chain of a busy process may just be waiting
        its turn for the GIL, behind the event loop and other threads: not stuck before
        :data:`CHAIN_LONG`."""
        since = self.main_since
        if not since:
            return False
        age = time.perf_counter_ns() - since
        if age <= _CHAIN_WAIT_NS:
            return False
        return age > _CHAIN_LONG_NS or (time.process_time_ns() - self.main_cpu_since) * 2 < age

    def main(self) -> InstanceThread | None:
        """The main thread, unless it is :meth:`stuck`."""
        if self.stuck():
            return None
        if self._main is None:
            self._main = InstanceThread(f"dagserve-{self._name}-chain", f"pipeline '{self._name}'")
        return self._main

    def take_spare(self) -> InstanceThread | None:
        """An idle spare thread, a new one below the limit, or ``None``."""
        if self._idle:
            return self._idle.pop()
        if len(self._spares) >= self._limit:
            return None
        thread = InstanceThread(f"dagserve-{self._name}-chain-{len(self._spares) + 1}", f"pipeline '{self._name}'")
        self._spares.append(thread)
        return thread

    def give_spare(self, thread: InstanceThread) -> None:
        self._idle.append(thread)

    def close(self) -> None:
        """End every thread once its chain is done (not waiting: a chain still running holds
        a request in flight, so the pipeline closes only after it)."""
        for thread in (self._main, *self._spares):
            if thread is not None:
                thread.close(wait=False)
        self._main = None
        self._spares.clear()
        self._idle.clear()


class _Chain(OffLoop):
    """One request's chain, as the worker thread runs it. Queued, it is either started by
    the thread or revoked by the event loop, never both (``_lock``)."""

    __slots__ = ("_lock", "_state", "main", "runner", "timer")

    def __init__(self, runner: PipelineRunner, main: ChainWorkers | None) -> None:
        super().__init__()
        self.runner = runner
        self.main = main  # the workers whose main thread runs it, which it tells when it runs
        self._state = "queued"
        self._lock = threading.Lock()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, future: asyncio.Future[int]) -> None:
        """On the event loop, every :data:`CHAIN_WAIT` while the chain is lined up on the main
        thread: revoke it if the chain running there is stuck."""
        main = self.main
        assert main is not None
        if self._state != "queued":
            self.timer = None
        elif main.stuck():
            self.timer = None
            self.revoke(future)
        else:
            self.timer = asyncio.get_running_loop().call_later(CHAIN_WAIT, self.watch, future)

    def revoke(self, future: asyncio.Future[int]) -> None:
        """On the event loop: if the thread has not started the chain, it never will, and
        ``future`` tells the waiting request so."""
        with self._lock:
            if self._state != "queued":
                return
            self._state = "revoked"
        if not future.done():
            future.set_result(_REVOKED)

    def start(
        self, order: Sequence[int], versions: Sequence[ModelVersion], values: list[Any], request: InferRequest
    ) -> int:
        """On the thread: :meth:`run`, unless revoked (then :data:`_REVOKED`)."""
        with self._lock:
            if self._state != "queued":
                return _REVOKED
            self._state = "started"
        main = self.main
        if main is None:
            return self.run(order, versions, values, request)
        main.main_cpu_since = time.process_time_ns()
        main.main_since = time.perf_counter_ns()
        try:
            return self.run(order, versions, values, request)
        finally:
            main.main_since = 0

    def run(
        self, order: Sequence[int], versions: Sequence[ModelVersion], values: list[Any], request: InferRequest
    ) -> int:
        """Run the steps ``order`` (their members ``versions``) on ``values``; return how
        many ran or were skipped: the event loop goes on from the next one.

        Raises:
            DagserveError: a step failed (attributed to the pipeline, step and model).
        """
        runner = self.runner
        steps = runner.plan.steps
        for done, (index, version) in enumerate(zip(order, versions)):
            if self.cancelled:
                return done
            step = steps[index]
            inputs = runner.inputs_for(step, values, request, self.later)
            if inputs is None:
                continue
            try:
                outputs = self._call(step, version, inputs, request)
            except ChainCancelled:
                return done
            if outputs is None:
                return done
            for name, slot in step.outputs:
                values[slot] = outputs.get(name)
        return len(order)

    def _call(
        self, step: StepPlan, version: ModelVersion, inputs: dict[str, Any], request: InferRequest
    ) -> Any:
        """:meth:`.PipelineRunner._call` on this thread; ``None`` when the member cannot run
        the request now (nothing recorded)."""
        runner = self.runner
        sub = step.member_request(inputs, request)
        stats = runner.step_statistics(step)
        start = time.perf_counter_ns()
        try:
            response = version.infer_now(sub, self)
        except DagserveError as exc:
            self.later.append(functools.partial(stats.fail.add, time.perf_counter_ns() - start))
            raise runner.attributed(exc, step) from exc
        if response is None:
            return None
        self.later.append(functools.partial(_succeeded, runner, step, stats, time.perf_counter_ns() - start))
        return response.outputs


def _succeeded(runner: PipelineRunner, step: StepPlan, stats: StepStatistics, ns: int) -> None:
    """A step's call succeeded after ``ns``, as :meth:`.PipelineRunner._call` records it."""
    stats.success.add(ns)
    stats.queue.add(0)
    stats.compute.add(ns)
    latency = runner.statistics.latency
    if latency is not None:
        latency.step(step.name, step.model, ns)


async def run_chain(
    runner: PipelineRunner, workers: ChainWorkers, order: Sequence[int], values: list[Any], request: InferRequest
) -> int:
    """Run the longest run of chainable steps at the start of ``order`` on a chain thread
    (when there are two or more and a thread is free); return how many of ``order`` are done.

    Raises:
        DagserveError: a step failed, as :meth:`.PipelineRunner._step` raises it. Cancelled,
            it waits for the step executing to return, then re-raises.
    """
    steps = runner.plan.steps
    versions: list[ModelVersion] = []
    get_version = runner.members.get_version
    for index in order:
        step = steps[index]
        if step.mapped or step.loop is not None:
            break
        try:
            version = get_version(step.model, step.version)
        except DagserveError:
            break  # the step says so on the event loop
        if not version.runs_now:
            break
        versions.append(version)
    if len(versions) < 2:
        return 0
    args = (order[: len(versions)], versions, values, request)
    for version in versions:
        version.enter()
    chain: _Chain | None = None
    try:
        thread = workers.main()
        if thread is not None:
            chain = _Chain(runner, workers)
            done = await _run_on(thread, chain, args)
            if done != _REVOKED:
                return done
        # The main thread is stuck (a model that blocks, a long step): a spare thread.
        thread = workers.take_spare()
        if thread is None:
            return 0
        try:
            chain = _Chain(runner, None)
            return await _run_on(thread, chain, args)
        finally:
            workers.give_spare(thread)
    finally:
        for version in versions:
            version.leave()
        if chain is not None:
            for record in chain.later:
                record()


async def _run_on(thread: InstanceThread, chain: _Chain, args: tuple[Any, ...]) -> int:
    """Run ``chain`` on ``thread``: how many steps it did, or :data:`_REVOKED` when, lined up
    on the main thread, it was taken back because the chain running there is stuck."""
    future: asyncio.Future[int] = thread.submit(chain.start, *args)
    if chain.main is not None:
        chain.timer = asyncio.get_running_loop().call_later(CHAIN_WAIT, chain.watch, future)
    try:
        # shield: a cancelled request must not cancel the future the thread resolves.
        return await asyncio.shield(future)
    except BaseException:
        chain.cancel()
        chain.revoke(future)
        with anyio.CancelScope(shield=True):
            await asyncio.wait([future])
        raise
    finally:
        if chain.timer is not None:
            chain.timer.cancel()
