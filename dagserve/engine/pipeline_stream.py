"""Decoupled pipelines: a pipeline with a decoupled step streams one response per response of
that step, through the steps downstream of it (see :class:`DecoupledPipelineRunner`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..dsl.plan import Plan, StepPlan, StreamRoute
from ..errors import UnsupportedError
from ..repository.config import ModelConfig
from ..types import InferRequest, InferResponse, ResponseSender
from .pipeline_runner import FirstFailure, Members, PipelineRunner, cached_route, collect

__all__ = ["DecoupledPipelineRunner"]


class DecoupledPipelineRunner(PipelineRunner):
    """The runner of a decoupled pipeline: one with a decoupled step, or declared decoupled.

    Its version's ``infer_stream`` hands every request a sender (``Server.infer`` refuses the
    pipeline, as any decoupled model). :meth:`submit` runs the plan's :class:`StreamRoute`:
    the steps that depend on no decoupled step once, then the decoupled step, and for each of
    its responses the steps downstream of it, on a copy of the tensors holding that response.
    Responses of one decoupled step are handled one after the other, so the pipeline's
    responses keep their order; the member keeps answering meanwhile (its responses queue).
    Ordinary pipelines never run this code. Gating, step calls (timing, slots, attribution)
    and first-failure handling are the core's (:class:`PipelineRunner`).
    """

    deadline = False  # a stream's responses are sent as they come; no whole-request deadline

    def __init__(self, members: Members, plan: Plan, config: ModelConfig, may_be_missing: frozenset[str]) -> None:
        super().__init__(members, plan, config, may_be_missing)
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
        await super().submit(request, batch_size)  # timed and counted as any pipeline request
        sender.send(None, final=True)
        return {}

    async def _execute(self, request: InferRequest) -> dict[str, np.ndarray]:
        assert request.sender is not None  # submit() checked
        await self._stream(request, request.sender)
        return {}

    async def _stream(self, request: InferRequest, sender: ResponseSender) -> None:
        route = cached_route(self._stream_routes, request, self.plan.stream_route)
        values = self._initial_values(request)
        await self._run(route.before, values, request)
        streams = []
        for i in route.decoupled:
            step = self._steps[i]
            inputs = self.inputs_for(step, values, request)
            if inputs is not None:
                streams.append((step, inputs))
        if not streams:
            await self._run(route.after, values, request)
            sender.send(collect(route.outputs, values), final=False)
        elif len(streams) == 1:
            await self._stream_step(*streams[0], values, route, request, sender)
        else:
            # Decoupled steps side by side (a switch's cases that both ran, or independent
            # branches): their responses interleave as they come, each stream in its order.
            async with FirstFailure() as group:
                for step, inputs in streams:
                    group.start_soon(self._stream_step, step, inputs, values, route, request, sender)

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
        after, wires = route.after, route.outputs

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
                raise _Downstream(exc) from exc
            sender.send(collect(wires, chunk), final=False)

        try:
            await self._call(step, inputs, request, each)
        except _Downstream as exc:
            # A step after this one failed (already attributed to itself), not this step.
            raise exc.error from None


class _Downstream(Exception):
    """Carries a failure of a step downstream of a decoupled step out through the member's
    stream, so the core does not count it or attribute it to the decoupled step."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
