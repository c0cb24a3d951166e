"""Decoupled pipelines: a pipeline with a decoupled step streams one response per response of
that step, through the steps downstream of it (see :class:`DecoupledPipelineRunner`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio
import numpy as np

from ..dsl.conditions import holds
from ..dsl.plan import Plan, Route, StepPlan, StreamRoute, Wire
from ..errors import (
    DagserveError,
    UnsupportedError,
)
from ..repository.config import ModelConfig
from ..types import InferRequest, InferResponse, ResponseSender
from .pipeline import InferCall, InferStreamCall, PipelineRunner, cached_route, read_wire

__all__ = ["DecoupledPipelineRunner"]

class DecoupledPipelineRunner(PipelineRunner):
    """The runner of a decoupled pipeline: one with a decoupled step, or declared decoupled.

    Its version's ``infer_stream`` hands every request a sender (``Server.infer`` refuses the
    pipeline, as any decoupled model). :meth:`submit` runs the plan's :class:`StreamRoute`:
    the steps that depend on no decoupled step once, then the decoupled step, and for each of
    its responses the steps downstream of it, on a copy of the tensors holding that response.
    Responses of one decoupled step are handled one after the other, so the pipeline's
    responses keep their order; the member keeps answering meanwhile (its responses queue).
    Ordinary pipelines never run this code.
    """

    def __init__(
        self,
        infer: InferCall,
        plan: Plan,
        config: ModelConfig,
        may_be_missing: frozenset[str],
        *,
        infer_stream: InferStreamCall,
    ) -> None:
        super().__init__(infer, plan, config, may_be_missing)
        self._infer_stream = infer_stream
        self._stream_routes: dict[frozenset[str] | None, StreamRoute] = {None: plan.stream_route(None)}

    async def submit(self, request: InferRequest, batch_size: int) -> Mapping[str, np.ndarray]:
        """Run the pipeline for one validated request and send its responses to
        ``request.sender``: one per response of the decoupled step (one in all when no
        decoupled step runs), with the outputs that exist for it, then the final empty one.
        Returns no outputs: they all went to the sender.

        Raises:
            DagserveError: as :meth:`PipelineRunner.submit`, after the responses already sent;
                a step downstream of the decoupled one is named as itself. Cancelling the
                caller cancels the decoupled member's request and every step in flight.
            UnsupportedError: the request has no sender.
        """
        sender = request.sender
        if sender is None:
            raise UnsupportedError(f"pipeline '{self.plan.name}' is decoupled: call it through infer_stream")
        start = time.perf_counter_ns()
        try:
            await self._stream(request, sender)
        except BaseException as exc:
            self._stats.record_failure(total_ns=time.perf_counter_ns() - start, error=exc)
            raise
        total = time.perf_counter_ns() - start
        self._stats.record_success(total_ns=total, queue_ns=0)
        self._stats.record_execution(batch_size=batch_size, requests=1, infer_ns=total)
        sender.send(None, final=True)
        return {}

    async def _stream(self, request: InferRequest, sender: ResponseSender) -> None:
        route = cached_route(self._stream_routes, request, self.plan.stream_route)
        values = self._initial_values(request)
        await self._run(route.before, values, request)
        streams = []
        for i in route.decoupled:
            step = self._steps[i]
            inputs = self._ready(step, values, request)
            if inputs is not None:
                streams.append((step, inputs))
        if not streams:
            await self._run(route.after, values, request)
            sender.send(_collect(route.outputs, values), final=False)
        elif len(streams) == 1:
            await self._stream_step(*streams[0], values, route, request, sender)
        else:
            # Decoupled steps side by side (a switch's cases that both ran, or independent
            # branches): their responses interleave as they come, each stream in its order.
            failure: list[Exception] = []
            async with anyio.create_task_group() as tg:

                async def one(step: StepPlan, inputs: dict[str, Any]) -> None:
                    try:
                        await self._stream_step(step, inputs, values, route, request, sender)
                    except Exception as exc:  # noqa: BLE001 - the first failure cancels the others
                        if not failure:
                            failure.append(exc)
                        tg.cancel_scope.cancel()

                for step, inputs in streams:
                    tg.start_soon(one, step, inputs)
            if failure:
                raise failure[0]

    async def _run(self, route: Route, values: list[Any], request: InferRequest) -> None:
        if route.sequential:
            for i in route.steps:
                await self._step(self._steps[i], values, request)
        elif route.steps:
            await self._concurrently(route, values, request)

    def _ready(self, step: StepPlan, values: list[Any], request: InferRequest) -> dict[str, Any] | None:
        """The inputs of ``step``, or None when it is skipped (as :meth:`_step` decides)."""
        gate = step.gate
        if gate is not None:
            actual = values[gate.slot] if gate.param is None else request.parameters.get(gate.param)
            if not holds(gate.condition, actual):
                self._step_stats[step.index].skipped += 1
                return None
        inputs = self._gather(step, values)
        if inputs is None:
            self._step_stats[step.index].skipped += 1
        return inputs

    async def _stream_step(
        self,
        step: StepPlan,
        inputs: dict[str, Any],
        values: list[Any],
        route: StreamRoute,
        request: InferRequest,
        sender: ResponseSender,
    ) -> None:
        """Call decoupled ``step`` and send one pipeline response per response it sends."""
        sub = InferRequest(
            inputs=inputs,
            id=request.id,
            datatypes=step.datatypes,
            parameters=request.parameters,
            outputs=step.requested,
        )
        after, wires = route.after, route.outputs
        downstream: list[Exception] = []  # a failure after this step, already attributed

        async def each(response: InferResponse) -> None:
            produced = response.outputs
            if not produced:
                return  # the member's bare end-of-stream marker
            chunk = values.copy()  # a step skipped for this response must not see the last one's
            for name, slot in step.outputs:
                chunk[slot] = produced[name]
            try:
                await self._run(after, chunk, request)
            except Exception as exc:
                downstream.append(exc)
                raise
            sender.send(_collect(wires, chunk), final=False)

        stats = self._step_stats[step.index]
        start = time.perf_counter_ns()
        try:
            if self._limiters is None:
                await self._infer_stream(step.model, step.version, sub, each)
                queued = start
            else:
                async with self._limiters[step.index]:
                    queued = time.perf_counter_ns()
                    await self._infer_stream(step.model, step.version, sub, each)
        except Exception as exc:
            if downstream:
                raise downstream[0] from None
            if not isinstance(exc, DagserveError):
                raise
            stats.fail.add(time.perf_counter_ns() - start)
            raise self._attributed(exc, step) from exc
        end = time.perf_counter_ns()
        stats.success.add(end - start)
        stats.queue.add(queued - start)
        stats.compute.add(end - queued)


def _collect(wires: tuple[Wire, ...], values: list[Any]) -> dict[str, Any]:
    """The outputs of ``wires`` that exist."""
    result = {}
    for wire in wires:
        value = read_wire(wire, values)
        if value is not None:
            result[wire.name] = value
    return result


