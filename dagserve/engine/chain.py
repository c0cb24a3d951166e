"""Chains: consecutive steps of one pipeline request run on one worker thread.

A step whose member runs blocking code (``execution: thread``, the default for sync Python
models) executes on a thread of the member's instance, so a pipeline of three such steps costs
three round trips between the event loop and worker threads per request: each is two GIL
hand-offs and several context switches, which on a pipeline of short steps cost about as much
as the steps themselves (docs/performance.md). A chain makes one round trip instead: the event
loop hands the request's run of such steps to a :class:`ChainWorkers` thread, which runs step
after step itself — each through the member's own validation, scheduler and instance pool
(:meth:`~.model.ModelVersion.infer_now`) — and hands the request back once.

What stays the same as step-by-step on the event loop:

* a member's instance is taken only when free and nothing is queued before the request (the
  batch of one its scheduler would send at once); otherwise the chain stops there and the
  event loop goes on from that step as usual (queueing, dynamic batching, priorities);
* statistics (the pipeline's, each step's, each member's) are the same; they are collected on
  the thread and recorded by the event loop when the chain hands back;
* errors name the pipeline, step and model, as :meth:`.PipelineRunner._call` does;
* a cancelled request (client gone, pipeline ``timeout``) finishes the step that is
  executing, as a cancelled thread call does, and runs no further step;
* a model that blocks holds its own instance and the one chain thread running it; the next
  requests find that instance busy and queue for it on the event loop, and other requests
  take another chain thread (or, with all busy, go step by step). Health, metrics and other
  models never wait for a chain.

A chain runs only where it cannot change the outcome: a sequential route, no
``max_inflight_requests``, a request that is not traced, and steps that are plain calls
(not mapped, not looped) of members that :attr:`~.model.ModelVersion.runs_now`. The
difference an author of model code may see: a member's ``execute`` runs on a chain thread
rather than always the same thread of its instance (still one call at a time per instance).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..dsl.plan import StepPlan
from ..errors import DagserveError
from ..types import InferRequest
from .instances import ChainCancelled, InstanceThread, Later

if TYPE_CHECKING:
    from .model import ModelVersion
    from .pipeline_runner import PipelineRunner, StepStatistics

__all__ = ["CHAIN_THREADS", "ChainWorkers", "run_chain"]

CHAIN_THREADS = 4
"""Chain threads per pipeline at most; with all of them busy a request goes step by step."""


class ChainWorkers:
    """The threads that run one pipeline's chains, one chain at a time each, started as
    needed up to ``limit``. Used on the event loop only."""

    def __init__(self, name: str, limit: int = CHAIN_THREADS) -> None:
        self._name = name
        self._limit = limit
        self._idle: list[InstanceThread] = []
        self._all: list[InstanceThread] = []

    def take(self) -> InstanceThread | None:
        """An idle thread, a new one below the limit, or ``None``."""
        if self._idle:
            return self._idle.pop()
        if len(self._all) >= self._limit:
            return None
        thread = InstanceThread(f"dagserve-{self._name}-chain-{len(self._all)}", f"pipeline '{self._name}'")
        self._all.append(thread)
        return thread

    def give(self, thread: InstanceThread) -> None:
        self._idle.append(thread)

    def close(self) -> None:
        """End every thread once its chain is done (not waiting: a chain still running holds
        a request in flight, so the pipeline closes only after it)."""
        for thread in self._all:
            thread.close(wait=False)
        self._idle.clear()


class _Chain:
    """One request's chain, as the worker thread runs it."""

    __slots__ = ("cancelled", "later", "runner")

    def __init__(self, runner: PipelineRunner) -> None:
        self.runner = runner
        self.cancelled = False  # set by the event loop; read by the thread between steps
        self.later: Later = []

    def is_cancelled(self) -> bool:
        return self.cancelled

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
        sub = InferRequest(
            inputs=inputs,
            id=request.id,
            datatypes=step.datatypes,
            parameters=request.parameters,
            outputs=step.requested,
        )
        stats = runner.step_statistics(step)
        start = time.perf_counter_ns()
        try:
            response = version.infer_now(sub, self.later, self.is_cancelled)
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
    thread = workers.take()
    if thread is None:
        return 0
    chain = _Chain(runner)
    for version in versions:
        version.enter()
    try:
        future = thread.submit(chain.run, order[: len(versions)], versions, values, request)
        try:
            # shield: a cancelled request must not cancel the future the thread resolves.
            done: int = await asyncio.shield(future)
        except BaseException:
            chain.cancelled = True
            with anyio.CancelScope(shield=True):
                await asyncio.wait([future])
            raise
    finally:
        workers.give(thread)
        for version in versions:
            version.leave()
        for record in chain.later:
            record()
    return done
