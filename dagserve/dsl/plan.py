"""Execution plans: a checked pipeline lowered to what the executor needs per request.

Everything that can be decided at load time is decided here, so running a request costs only
list indexing and model calls: every tensor gets an integer *slot* in a per-request list; each
step knows which slots feed which of its model's inputs (and how to adapt batch dimensions),
which slots its outputs fill, the outputs to request, and the steps it waits for. A
:class:`Route` is the part of the plan needed for one set of requested outputs (output
pruning), with a flag telling the executor when no two steps can ever run at once, so it
can run them one after the other without spawning tasks. A pipeline with decoupled steps runs
a :class:`StreamRoute` instead: the same route cut where the decoupled steps stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..types import DataType, InferRequest, RequestedOutput
from .conditions import Condition, Param
from .spec import STACK, FrozenMap, GatherSpec, Source, TensorRef, source_refs
from .typecheck import Adapt, CheckedPipeline, TensorType, adapt

__all__ = ["Candidate", "Gate", "LoopPlan", "Plan", "Route", "StepPlan", "StreamRoute", "Wire", "build_plan"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place a wire may read from: a slot, and how to adapt its batch dimension."""

    slot: int
    adapt: Adapt


@dataclass(frozen=True, kw_only=True, slots=True)
class Wire:
    """One model input of a step (or one pipeline output): read the first candidate present.

    ``dims`` is the consumer's declared shape, used to decide a :attr:`Adapt.SQUEEZE` at run
    time as Triton does. A missing ``required`` wire skips the step; a missing optional one is
    left out of the request.
    """

    name: str
    candidates: tuple[Candidate, ...]
    dims: tuple[int, ...]
    required: bool = True
    mapped: bool = False


@dataclass(frozen=True, slots=True)
class Gate:
    """A step's ``when``: the condition and where its subject is read: request parameter
    ``param``, or (``param`` None) tensor ``slot``."""

    condition: Condition
    slot: int
    param: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopPlan:
    """A looping step: ``carry`` pairs (input, output) fed back after each call."""

    max_iterations: int
    carry: tuple[tuple[str, str], ...]
    until: Condition | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StepPlan:
    """One step, lowered. ``simple`` is set when every input is one required slot read as is:
    the executor's fast path builds the request from it with no per-wire checks. ``decoupled``:
    the member answers 0..N times (it is called through ``infer_stream``)."""

    index: int
    name: str
    model: str
    version: str
    wires: tuple[Wire, ...]
    simple: tuple[tuple[str, int], ...] | None
    outputs: tuple[tuple[str, int], ...]
    requested: tuple[RequestedOutput, ...]
    datatypes: FrozenMap[str, DataType]
    gate: Gate | None
    deps: tuple[int, ...]
    mapped: bool = False
    gather: GatherSpec = STACK
    member_batching: bool = False
    empty_outputs: tuple[tuple[str, int, np.dtype[Any], tuple[int, ...]], ...] = ()
    loop: LoopPlan | None = None
    decoupled: bool = False

    def member_request(self, inputs: dict[str, Any], request: InferRequest, *, fan_out: bool = False) -> InferRequest:
        """The request for one call of this step's member: ``inputs``, with the pipeline
        request's id and parameters, and the outputs the step reads."""
        return InferRequest(
            inputs=inputs,
            id=request.id,
            datatypes=self.datatypes,
            parameters=request.parameters,
            outputs=self.requested,
            fan_out=fan_out,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """The steps needed for one set of requested outputs, in topological order.

    ``remaining[i]`` is how many route steps step ``i`` waits for, ``successors[i]`` the route
    steps waiting for it; ``roots`` wait for none. ``sequential``: every step waits for the one
    before it, so they can only ever run one at a time.
    """

    steps: tuple[int, ...]
    sequential: bool
    remaining: tuple[int, ...]
    successors: tuple[tuple[int, ...], ...]
    roots: tuple[int, ...]
    outputs: tuple[Wire, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamRoute:
    """A route of a pipeline with decoupled steps, cut where they stream.

    ``before`` runs once: the steps that depend on no decoupled step. Then each of the
    ``decoupled`` steps (those of the route, none downstream of another) that is not skipped
    streams, and for each of its responses ``after`` runs on a copy of the tensors with that
    response's outputs in place: the route's steps downstream of any decoupled step (those
    reading another decoupled step's outputs find nothing there). When every decoupled step is
    skipped, ``after`` runs once. ``outputs`` are read after ``after``, as :attr:`Route.outputs`.
    """

    before: Route
    decoupled: tuple[int, ...]
    after: Route
    outputs: tuple[Wire, ...]


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A pipeline ready to run: slots, steps (index = position in ``steps``) and outputs.
    ``decoupled`` are the indices of the steps whose member is decoupled; ``one_of`` the
    groups of inputs of which a request gives exactly one."""

    name: str
    slot_count: int
    inputs: tuple[tuple[str, int], ...]
    steps: tuple[StepPlan, ...]
    outputs: FrozenMap[str, Wire]
    max_inflight_requests: int = 0
    slot_names: tuple[str, ...] = field(default=(), compare=False)
    decoupled: tuple[int, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()

    def route(self, wanted: Iterable[str] | None) -> Route:
        """The route computing ``wanted`` outputs (None: all). Names must be outputs of the plan."""
        names = tuple(self.outputs) if wanted is None else tuple(wanted)
        return self._route(self._needed(names), names)

    def stream_route(self, wanted: Iterable[str] | None) -> StreamRoute:
        """The :class:`StreamRoute` computing ``wanted`` outputs (None: all)."""
        names = tuple(self.outputs) if wanted is None else tuple(wanted)
        needed = self._needed(names)
        decoupled = tuple(i for i in self.decoupled if i in needed)
        downstream: set[int] = set()
        for i in sorted(needed):  # topological: a step comes after the steps it depends on
            if any(d in downstream or d in decoupled for d in self.steps[i].deps):
                downstream.add(i)
        return StreamRoute(
            before=self._route(needed - downstream - set(decoupled), ()),
            decoupled=decoupled,
            after=self._route(downstream, ()),
            outputs=tuple(self.outputs[n] for n in names),
        )

    def _needed(self, names: tuple[str, ...]) -> set[int]:
        """The steps that outputs ``names`` need, transitively."""
        producers = {c.slot for n in names for c in self.outputs[n].candidates}
        slot_owner = {slot: s.index for s in self.steps for _, slot in s.outputs}
        needed: set[int] = set()
        stack = [slot_owner[slot] for slot in producers if slot in slot_owner]
        while stack:
            i = stack.pop()
            if i not in needed:
                needed.add(i)
                stack.extend(self.steps[i].deps)
        return needed

    def _route(self, needed: set[int], names: tuple[str, ...]) -> Route:
        """The route running ``needed`` steps; steps they depend on outside it have run."""
        order = tuple(i for i in range(len(self.steps)) if i in needed)
        remaining = [0] * len(self.steps)
        successors: list[list[int]] = [[] for _ in self.steps]
        for i in order:
            for d in self.steps[i].deps:
                if d in needed:
                    remaining[i] += 1
                    successors[d].append(i)
        sequential = all(order[k - 1] in self.steps[order[k]].deps for k in range(1, len(order)))
        return Route(
            steps=order,
            sequential=sequential,
            remaining=tuple(remaining),
            successors=tuple(tuple(s) for s in successors),
            roots=tuple(i for i in order if not remaining[i]),
            outputs=tuple(self.outputs[n] for n in names),
        )


def build_plan(checked: CheckedPipeline) -> Plan:
    """Lower a checked pipeline to a :class:`Plan` (pure; no server needed)."""
    spec = checked.spec
    index = {name: i for i, name in enumerate(checked.order)}
    steps = [spec.step(name) for name in checked.order]
    slots: dict[TensorRef, int] = {}
    slot_names: list[str] = []

    def slot(ref: TensorRef) -> int:
        if ref not in slots:
            slots[ref] = len(slot_names)
            slot_names.append(str(ref))
        return slots[ref]

    inputs = tuple((t.name, slot(TensorRef(name=t.name))) for t in spec.inputs)
    # Give a slot to every step output something reads, before lowering the steps.
    for step in steps:
        for ref in step.refs():
            if ref.step != step.name:
                slot(ref)
    for o in spec.outputs:
        for ref in source_refs(o.source):
            slot(ref)

    batching = spec.max_batch_size > 0
    lowered = []
    for i, step in enumerate(steps):
        member = checked.members[step.name]
        member_inputs = {t.name: t for t in member.input}
        wires = tuple(
            _wire(
                name,
                source,
                member_inputs[name].dims,
                member.batching,
                checked.types,
                slot,
                required=not member_inputs[name].optional,
                mapped=name in step.map_over,
            )
            for name, source in step.inputs.items()
        )
        filled = tuple(
            (o.name, slots[TensorRef(step=step.name, name=o.name)])
            for o in member.output
            if TensorRef(step=step.name, name=o.name) in slots
        )
        wanted = [name for name, _ in filled]
        counts = step.gather.counts if step.map_over else ""
        if counts and TensorRef(step=step.name, name=counts) in slots:
            filled += ((counts, slots[TensorRef(step=step.name, name=counts)]),)
        loop = None
        if step.loop is not None:
            wanted += [out for out in step.loop.carry.values() if out not in wanted]
            until = step.loop.until
            if (
                until is not None
                and isinstance(until.subject, TensorRef)
                and until.subject.name not in wanted
            ):
                wanted.append(until.subject.name)
            loop = LoopPlan(
                max_iterations=step.loop.max_iterations, carry=tuple(step.loop.carry.items()), until=until
            )
        gate = None
        if step.when is not None:
            subject = step.when.subject
            if isinstance(subject, Param):
                gate = Gate(step.when, -1, subject.name)
            else:
                gate = Gate(step.when, slots[subject], None)
        simple = None
        if all(
            len(w.candidates) == 1 and w.candidates[0].adapt is Adapt.AS_IS and w.required and not w.mapped
            for w in wires
        ):
            simple = tuple((w.name, w.candidates[0].slot) for w in wires)
        output_types = {o.name: (o.data_type.numpy_dtype, o.dims) for o in member.output}
        if step.gather.mode == "concat":
            output_types = {name: (dtype, dims[1:]) for name, (dtype, dims) in output_types.items()}
        if counts:
            output_types[counts] = (np.dtype(np.int64), ())
        lowered.append(
            StepPlan(
                index=i,
                name=step.name,
                model=step.model,
                version="" if step.model_version < 0 else str(step.model_version),
                wires=wires,
                simple=simple,
                outputs=filled,
                requested=tuple(RequestedOutput(name=n) for n in wanted),
                datatypes=FrozenMap(
                    {n: t.data_type for n, t in member_inputs.items() if t.data_type is DataType.BF16}
                ),
                gate=gate,
                deps=tuple(
                    sorted({index[r.step] for r in step.refs() if r.step is not None and r.step != step.name})
                ),
                mapped=bool(step.map_over),
                gather=step.gather,
                member_batching=member.batching,
                empty_outputs=tuple(
                    (name, s, output_types[name][0], (0, *(max(0, d) for d in output_types[name][1])))
                    for name, s in filled
                ),
                loop=loop,
                decoupled=step.name in checked.decoupled,
            )
        )
    outputs = FrozenMap(
        {o.name: _wire(o.name, o.source, o.shape or (), batching, checked.types, slot) for o in spec.outputs}
    )
    return Plan(
        name=spec.name,
        slot_count=len(slot_names),
        inputs=inputs,
        steps=tuple(lowered),
        outputs=outputs,
        max_inflight_requests=spec.max_inflight_requests,
        slot_names=tuple(slot_names),
        decoupled=tuple(index[name] for name in checked.decoupled),
        one_of=spec.one_of,
    )


def _wire(
    name: str,
    source: Source,
    dims: tuple[int, ...],
    batching: bool,
    types: Any,
    slot: Any,
    *,
    required: bool = True,
    mapped: bool = False,
) -> Wire:
    candidates = []
    for ref in source_refs(source):
        t: TensorType = types[ref]
        how = Adapt.AS_IS if mapped else adapt(t, dims, batching)
        assert how is not None, "checked pipelines only connect compatible shapes"
        candidates.append(Candidate(slot(ref), how))
    return Wire(name=name, candidates=tuple(candidates), dims=dims, required=required, mapped=mapped)
