"""Load-time checking of a pipeline against its members' configs.

:func:`check_pipeline` takes a :class:`PipelineSpec` and a way to look up each member's
config, and either returns a :class:`CheckedPipeline` (types of every tensor, a topological
order, which steps may be skipped, the completed output types) or raises one
:class:`~dagserve.errors.ConfigError` listing every problem, each naming the file (and line),
the step and the tensor:

* unknown models or versions, or members that failed to load (with their reason);
* step inputs the model does not have, model inputs nobody feeds, outputs a model does not have;
* datatype mismatches and incompatible shapes between producer and consumer (``-1`` matches
  any size; batching and non-batching tensors connect as on Triton, see :func:`adapt`);
* tensors nobody produces, cycles, ``max_batch_size`` larger than a member allows;
* outputs that may be missing (their producer runs conditionally) but are not ``optional``;
* decoupled members (0..N responses per request) where the executor cannot stream them: a
  decoupled step downstream of another, a decoupled step that maps or loops, a step that needs
  the responses of two decoupled steps at once.

Unused pipeline inputs and steps that feed no output are logged as warnings.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..repository.config import ModelConfig, TensorConfig, TransactionPolicy
from ..repository.confine import check_model_name
from ..repository.locations import did_you_mean
from ..types import DataType
from .conditions import Condition, Op, Param
from .spec import OutputSpec, PipelineSpec, Source, StepSpec, TensorRef, source_refs

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Adapt", "CheckedPipeline", "MemberLookup", "TensorType", "adapt", "check_pipeline", "dims_match"]

log = logging.getLogger("dagserve.dsl")

MemberLookup = Callable[[str, int], ModelConfig]
"""``(model, version) -> config`` of a loaded, ready member; raises an exception whose message
says why not (unknown, failed to load with reason, not ready)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorType:
    """What is known before run time of a tensor flowing through a pipeline.

    ``batched``: its first dimension is a batch dimension not included in ``dims`` (it comes
    from a batching model, a batching pipeline's input, or the gather of a map step).
    """

    datatype: DataType
    dims: tuple[int, ...]
    batched: bool
    producer: str

    @property
    def full(self) -> tuple[int, ...]:
        return (-1, *self.dims) if self.batched else self.dims


class Adapt(enum.Enum):
    """How a tensor is handed to a consumer whose batching differs, as Triton does it."""

    AS_IS = "as is"
    EXPAND = "add a batch dimension of 1"
    SQUEEZE = "drop a batch dimension of 1"


def dims_match(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Same rank and every dimension equal, ``-1`` on either side matching anything."""
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def adapt(tensor: TensorType, dims: tuple[int, ...], batching: bool) -> Adapt | None:
    """How ``tensor`` reaches a consumer declaring ``dims`` (with a batch dimension in front
    when ``batching``); None when the shapes cannot be reconciled.

    Triton's rule (``ReshapeTensorDims``): a non-batched tensor whose dims equal a batching
    consumer's gets a leading 1; a batched tensor whose non-batch dims equal a non-batching
    consumer's dims loses its leading dimension when that is 1; otherwise full shapes must agree.
    """
    if tensor.batched == batching:
        return Adapt.AS_IS if dims_match(tensor.dims, dims) else None
    if batching:
        if dims_match(tensor.dims, dims):
            return Adapt.EXPAND
        return Adapt.AS_IS if dims_match(tensor.dims, (-1, *dims)) else None
    if dims_match(tensor.full, dims):
        return Adapt.AS_IS
    return Adapt.SQUEEZE if dims_match(tensor.dims, dims) else None


@dataclass(frozen=True, kw_only=True)
class CheckedPipeline:
    """A pipeline that passed :func:`check_pipeline`, with what was learnt about it.

    ``spec.outputs`` all have a datatype and shape (inferred where not declared); ``order`` is
    a topological order of the steps; ``may_skip`` the steps that may not run for a request;
    ``may_be_missing`` the outputs a response may lack. ``decoupled`` names the steps whose
    member is decoupled, in ``order``: each of their responses flows through the steps
    downstream of them, so the pipeline is decoupled too.
    """

    spec: PipelineSpec
    members: Mapping[str, ModelConfig]
    types: Mapping[TensorRef, TensorType]
    order: tuple[str, ...]
    may_skip: frozenset[str]
    may_be_missing: frozenset[str]
    decoupled: tuple[str, ...] = ()


def _member(step: StepSpec) -> str:
    """How messages name what a step calls: the model, or the function and where it is."""
    if step.function is not None:
        return f"function {step.function.name} ({step.function.origin})"
    return f"model '{step.model}'"


def check_pipeline(spec: PipelineSpec, lookup: MemberLookup, *, known_models: Collection[str] = ()) -> CheckedPipeline:
    """Check ``spec`` against its members (see the module doc). ``known_models`` (the names a
    member could have) give an unknown member's message its "did you mean" hint.

    Raises:
        ConfigError: every problem found, separated by ``"; "``.
    """
    return _Checker(spec, lookup, known_models).run()


class _Checker:
    def __init__(self, spec: PipelineSpec, lookup: MemberLookup, known_models: Collection[str] = ()) -> None:
        self.spec = spec
        self.lookup = lookup
        self.known_models = known_models
        self.problems: list[str] = []
        self.members: dict[str, ModelConfig] = {}
        self.types: dict[TensorRef, TensorType] = {}
        self.steps = {s.name: s for s in spec.steps}
        self.batching = spec.max_batch_size > 0

    # -- reporting ---------------------------------------------------------------------------
    def problem(self, message: str, step: StepSpec | None = None, *, at: str = "") -> None:
        """Record a problem, located at ``step``'s origin, else ``at`` (e.g. an output's), else
        the pipeline's."""
        origin = (step.origin if step is not None and step.origin else "") or at or self.spec.origin
        where = f"{origin}: " if origin else ""
        which = f", step '{step.name}'" if step is not None else ""
        self.problems.append(f"{where}pipeline '{self.spec.name}'{which}: {message}")

    def run(self) -> CheckedPipeline:
        self.check_names()
        for t in self.spec.inputs:
            self.types[TensorRef(name=t.name)] = TensorType(
                datatype=t.datatype,
                dims=t.shape,
                batched=self.batching,
                producer=f"pipeline input '{t.name}'",
            )
        self.check_one_of()
        for step in self.spec.steps:
            self.load_member(step)
        for step in self.spec.steps:
            if step.name in self.members:
                self.check_step(step, self.members[step.name])
        graph = self.graph()
        order = self.order(graph)
        outputs = tuple(self.check_output(o) for o in self.spec.outputs)
        may_skip, missing = self.absence(order, outputs)
        decoupled = tuple(
            n for n in order if n in self.members and self.members[n].model_transaction_policy.decoupled
        )
        if decoupled:
            missing |= self.check_decoupled(graph, order, decoupled, outputs)
        if self.problems:
            raise ConfigError("; ".join(self.problems))
        self.warn_unused(graph)
        return CheckedPipeline(
            spec=dataclasses.replace(self.spec, outputs=outputs),
            members=self.members,
            types=self.types,
            order=order,
            may_skip=may_skip,
            may_be_missing=missing,
            decoupled=decoupled,
        )

    # -- structure ---------------------------------------------------------------------------
    def check_names(self) -> None:
        for kind, names in (
            ("input", [t.name for t in self.spec.inputs]),
            ("output", [o.name for o in self.spec.outputs]),
            ("step", [s.name for s in self.spec.steps]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            for n in dupes:
                self.problem(f"{kind} '{n}' is declared twice")
        if not self.spec.steps:
            self.problem("has no steps")
        if not self.spec.outputs:
            self.problem("has no outputs")

    def load_member(self, step: StepSpec) -> None:
        if step.model == self.spec.name:
            self.problem(f"calls the pipeline itself (model '{step.model}')", step)
            return
        try:
            check_model_name(step.model, field="model")  # security: confinement of member names
            # A function step is checked against the config its declaration makes, which is
            # the one the engine serves it with.
            config = (
                step.function.config(step.model) if step.function is not None
                else self.lookup(step.model, step.model_version)
            )
        except Exception as exc:  # noqa: BLE001 - the lookup's message says why the member is unusable
            hint = did_you_mean(step.model, self.known_models) if str(exc).startswith("unknown model") else ""
            self.problem(f"{exc}{hint}", step)
            return
        self.members[step.name] = config
        mapped = bool(step.map_over)
        concat = mapped and step.gather.mode == "concat"
        for o in config.output:
            # Concatenated items keep their own first dimension (any length), dropping the map's.
            self.types[TensorRef(step=step.name, name=o.name)] = TensorType(
                datatype=o.data_type,
                dims=o.dims[1:] if concat else o.dims,
                batched=config.batching or mapped,
                producer=f"output '{o.name}' of {_member(step)} (step '{step.name}')",
            )
        if mapped and step.gather.counts:
            self.types[TensorRef(step=step.name, name=step.gather.counts)] = TensorType(
                datatype=DataType.INT64,
                dims=(),
                batched=True,
                producer=f"counts output '{step.gather.counts}' of step '{step.name}' (gather {step.gather.mode})",
            )

    def check_one_of(self) -> None:
        """Each ``one_of`` group names two or more optional pipeline inputs."""
        inputs = {t.name: t for t in self.spec.inputs}
        for group in self.spec.one_of:
            if len(set(group)) < 2:
                self.problem(f"one_of {list(group)} must name at least two different inputs")
            for name in group:
                spec = inputs.get(name)
                if spec is None:
                    self.problem(
                        f"one_of names '{name}', which is not a pipeline input{did_you_mean(name, inputs)} "
                        f"(inputs: {', '.join(inputs) or 'none'})"
                    )
                elif not spec.optional:
                    self.problem(
                        f"one_of names input '{name}', which is required; inputs of a one_of group must be "
                        "declared optional (optional: true), since a request gives only one of them"
                    )

    def check_gather(self, step: StepSpec, member: ModelConfig) -> None:
        """A gather mode fits the step: counts do not hide a model output, concatenated outputs
        have a dimension to concatenate along, a pad value suits every output's datatype."""
        gather = step.gather
        if not step.map_over:
            if gather.mode != "stack":
                self.problem(f"gather '{gather.mode}' is for a step that maps (map_over); this step does not", step)
            return
        outputs = {o.name: o for o in member.output}
        if gather.counts and gather.counts in outputs:
            self.problem(
                f"the gather counts output '{gather.counts}' has the name of an output of model '{step.model}'; "
                "name the counts otherwise (gather: {mode: "
                f"{gather.mode}, counts: {gather.counts}_PER_ITEM}})",
                step,
            )
        read = {r.name for s in self.spec.steps for r in s.refs() if r.step == step.name}
        read |= {r.name for o in self.spec.outputs for r in source_refs(o.source) if r.step == step.name}
        for o in member.output:
            if o.name not in read:
                continue  # not gathered
            if gather.mode == "concat" and not o.dims:
                self.problem(
                    f"gather 'concat' joins items along their first dimension, but output '{o.name}' of "
                    f"model '{step.model}' has none per item (shape []); use gather 'stack'",
                    step,
                )
            if gather.mode == "pad" and not _pads(gather.value, o.data_type):
                self.problem(
                    f"gather 'pad' value {gather.value!r} does not suit output '{o.name}' of model "
                    f"'{step.model}', which is {o.data_type.value}",
                    step,
                )

    # -- one step ----------------------------------------------------------------------------
    def check_step(self, step: StepSpec, member: ModelConfig) -> None:
        model = _member(step)
        if (
            self.batching
            and member.max_batch_size
            and member.max_batch_size < self.spec.max_batch_size
            and not step.map_over
        ):
            self.problem(
                f"the pipeline allows maximum batch size {self.spec.max_batch_size}, but it contains "
                f"{model} which only allows maximum batch size to be {member.max_batch_size}",
                step,
            )
        specs = {t.name: t for t in member.input}
        for name in step.inputs:
            if name not in specs:
                self.problem(
                    f"{model} has no input '{name}'{did_you_mean(name, specs)} (its inputs: {', '.join(specs) or 'none'})",
                    step,
                )
        for name, t in specs.items():
            if name not in step.inputs and not t.optional:
                self.problem(f"input '{name}' of {model} is not mapped to any tensor", step)
        for name in step.map_over:
            if name not in step.inputs:
                self.problem(f"map_over names '{name}', which is not one of the step's inputs", step)
        if step.map_over and step.loop is not None:
            self.problem("a step cannot both map and loop", step)
        self.check_gather(step, member)
        for name, source in step.inputs.items():
            if name in specs:
                self.check_wire(step, name, source, specs[name].data_type, specs[name].dims, member.batching)
        if step.when is not None:
            self.check_condition_subject(step)
        if step.loop is not None:
            self.check_loop(step, member)

    def resolve(self, step: StepSpec | None, ref: TensorRef, reader: str, *, at: str = "") -> TensorType | None:
        """The type of ``ref``, or None after reporting why it cannot be read (None silently
        when its producer's member failed: that is already reported); ``at`` locates a reader
        that is not a step."""
        if ref.step is None:
            found = self.types.get(ref)
            if found is None:
                inputs = [t.name for t in self.spec.inputs]
                self.problem(
                    f"{reader} reads '{ref.name}', which is not a pipeline input{did_you_mean(ref.name, inputs)} "
                    f"(inputs: {', '.join(inputs) or 'none'})",
                    step,
                    at=at,
                )
            return found
        producer = self.steps.get(ref.step)
        if producer is None:
            hint = did_you_mean(ref.step, self.steps)
            self.problem(f"{reader} reads '{ref}', but no step is named '{ref.step}'{hint}", step, at=at)
            return None
        if producer.name not in self.members:
            return None
        found = self.types.get(ref)
        if found is None:
            names = [o.name for o in self.members[producer.name].output]
            self.problem(
                f"{reader} reads '{ref}', but model '{producer.model}' of step '{producer.name}' has no output "
                f"'{ref.name}'{did_you_mean(ref.name, names)} (its outputs: {', '.join(names) or 'none'})",
                step,
                at=at,
            )
        return found

    def check_wire(
        self,
        step: StepSpec,
        name: str,
        source: Source,
        datatype: DataType,
        dims: tuple[int, ...],
        batching: bool,
    ) -> None:
        reader = f"input '{name}'"
        for ref in source_refs(source):
            if ref.step == step.name:
                continue  # reported as a cycle
            found = self.resolve(step, ref, reader)
            if found is None:
                continue
            consumer = f"{_member(step)} input '{name}'"
            if found.datatype is not datatype:
                self.problem(
                    f"datatype mismatch on '{ref}': {found.producer} is {found.datatype.value}, "
                    f"but {consumer} expects {datatype.value}",
                    step,
                )
            if name in step.map_over:
                element = found.full[1:] if found.full else None
                if element is None or not dims_match(element, dims):
                    self.problem(
                        f"shape mismatch on '{ref}': mapping over the first dimension of {list(found.full)} from "
                        f"{found.producer} gives elements of shape {list(element or ())}, but {consumer} expects "
                        f"{list(dims)} per element",
                        step,
                    )
            elif adapt(found, dims, batching) is None:
                expected = [-1, *dims] if batching else list(dims)
                self.problem(
                    f"shape mismatch on '{ref}': {found.producer} has shape {list(found.full)}, "
                    f"but {consumer} expects {expected}",
                    step,
                )

    def check_condition_subject(self, step: StepSpec) -> None:
        assert step.when is not None
        subject = step.when.subject
        if isinstance(subject, Param):
            return
        found = self.resolve(step, subject, f"condition '{step.when}'")
        if found is not None and found.datatype is not DataType.BYTES:
            values = step.when.value if isinstance(step.when.value, tuple) else (step.when.value,)
            if any(isinstance(v, (str, bytes)) for v in values):
                self.problem(
                    f"condition '{step.when}' compares {found.datatype.value} tensor '{subject}' with text",
                    step,
                )

    def check_loop(self, step: StepSpec, member: ModelConfig) -> None:
        loop = step.loop
        assert loop is not None
        if loop.max_iterations < 1:
            self.problem("loop.max_iterations must be at least 1", step)
        inputs = {t.name: t for t in member.input}
        outputs = {t.name: t for t in member.output}
        for fed, produced in loop.carry.items():
            if fed not in step.inputs:
                self.problem(
                    f"loop.carry feeds input '{fed}', which the step does not map (give its first value)",
                    step,
                )
                continue
            out = outputs.get(produced)
            if out is None:
                self.problem(
                    f"loop.carry reads output '{produced}', which model '{step.model}' does not have", step
                )
                continue
            inp = inputs.get(fed)
            if inp is not None and (inp.data_type is not out.data_type or not dims_match(inp.dims, out.dims)):
                self.problem(
                    f"loop.carry: output '{produced}' ({out.data_type.value} {list(out.dims)}) cannot feed input "
                    f"'{fed}' ({inp.data_type.value} {list(inp.dims)})",
                    step,
                )
        until = loop.until
        subject = until.subject if until is not None else None
        if isinstance(subject, TensorRef) and (subject.step != step.name or subject.name not in outputs):
            self.problem(
                f"loop.until '{until}' must test an output of this step ('{step.name}.<output>')", step
            )

    # -- the graph ---------------------------------------------------------------------------
    def graph(self) -> nx.DiGraph:
        import networkx as nx  # only needed while loading; keeps `import dagserve` light

        graph = nx.DiGraph()
        graph.add_nodes_from(s.name for s in self.spec.steps)
        for step in self.spec.steps:
            for ref in step.refs():
                if ref.step is not None and ref.step in self.steps:
                    graph.add_edge(ref.step, step.name)
        return graph

    def order(self, graph: nx.DiGraph) -> tuple[str, ...]:
        import networkx as nx

        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            # Ties keep the declaration order, so a plan is stable across loads.
            position = {s.name: i for i, s in enumerate(self.spec.steps)}
            return tuple(nx.lexicographical_topological_sort(graph, key=position.__getitem__))
        path = " -> ".join([cycle[0][0], *(v for _, v in cycle)])
        self.problem(f"steps form a cycle: {path}", self.steps[cycle[0][0]])
        return ()

    # -- outputs -----------------------------------------------------------------------------
    def check_output(self, output: OutputSpec) -> OutputSpec:
        found: TensorType | None = None
        for ref in source_refs(output.source):
            t = self.resolve(None, ref, f"output '{output.name}'", at=output.origin)
            if t is None:
                continue
            if found is not None and t.datatype is not found.datatype:
                self.problem(
                    f"output '{output.name}': '{ref}' is {t.datatype.value} but an alternative is {found.datatype.value}",
                    at=output.origin,
                )
            found = found or t
            if output.datatype is not None and t.datatype is not output.datatype:
                self.problem(
                    f"datatype mismatch on output '{output.name}': {t.producer} is {t.datatype.value}, "
                    f"but the output is declared {output.datatype.value}",
                    at=output.origin,
                )
            if output.shape is not None and adapt(t, output.shape, self.batching) is None:
                declared = [-1, *output.shape] if self.batching else list(output.shape)
                self.problem(
                    f"shape mismatch on output '{output.name}': {t.producer} has shape {list(t.full)}, "
                    f"but the output is declared {declared}",
                    at=output.origin,
                )
        if found is None or (output.datatype is not None and output.shape is not None):
            return output
        shape = output.shape
        if shape is None:
            shape = found.full if found.batched and not self.batching else found.dims
        return dataclasses.replace(output, datatype=output.datatype or found.datatype, shape=shape)

    def absence(
        self, order: tuple[str, ...], outputs: tuple[OutputSpec, ...]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Which steps may be skipped and which outputs may be missing; reports outputs that
        may be missing because of a condition but are not declared optional."""
        optional_inputs = {t.name for t in self.spec.inputs if t.optional}
        # step -> (why it may be skipped, whether a condition is behind it, its own `when`
        # when that alone is the reason)
        skip: dict[str, tuple[str, bool, Condition | None]] = {}

        def absent(source: Source) -> tuple[str, bool] | None:
            reasons: list[str] = []
            whens: list[Condition | None] = []
            conditional = False
            for ref in source_refs(source):
                if ref.step is None and ref.name in optional_inputs:
                    reasons.append(f"input '{ref.name}' is optional")
                    whens.append(None)
                elif ref.step is not None and ref.step in skip:
                    why, cond, when = skip[ref.step]
                    reasons.append(why)
                    whens.append(when)
                    conditional = conditional or cond
                else:
                    return None
            if len(whens) > 1 and _exhaustive(whens):
                return None  # the cases of a switch: exactly one of them runs
            return " and ".join(reasons), conditional

        for name in order:
            step = self.steps[name]
            if step.when is not None:
                skip[name] = (f"step '{name}' runs only when {step.when}", True, step.when)
                continue
            member = self.members.get(name)
            optional = {t.name for t in member.input if t.optional} if member else set()
            for key, source in step.inputs.items():
                found = absent(source)
                if found is not None and key not in optional:
                    skip[name] = (*found, None)
                    break
        missing = set()
        for output in outputs:
            found = absent(output.source)
            if found is None:
                continue
            missing.add(output.name)
            # Triton lets an output go missing when an optional input is absent; a condition
            # making it missing must be acknowledged with optional: true.
            why, conditional = found
            if conditional and not output.optional:
                self.problem(f"output '{output.name}' may be missing ({why}); declare it optional")
        return frozenset(skip), frozenset(missing)

    # -- decoupled members --------------------------------------------------------------------
    def check_decoupled(
        self,
        graph: nx.DiGraph,
        order: tuple[str, ...],
        decoupled: tuple[str, ...],
        outputs: tuple[OutputSpec, ...],
    ) -> frozenset[str]:
        """Report decoupled steps the executor cannot stream; return the outputs a response
        may lack because it comes from another decoupled step than theirs.

        Each response of a decoupled step runs the steps downstream of it once, so a second
        decoupled step further down would turn every response into a stream of its own (Triton
        refuses that too), and a map or loop would have to gather streams. With several decoupled
        steps (side by side, or the cases of a switch), a response carries the outputs of one
        of them: a step needing two of them never runs, an output needing one may be missing.
        """
        import networkx as nx

        reported = len(self.problems)
        for name in decoupled:
            step = self.steps[name]
            if step.map_over or step.loop is not None:
                how = "map over" if step.map_over else "loop"
                self.problem(
                    f"model '{step.model}' is decoupled (0..N responses per request): a step cannot {how} it",
                    step,
                )
            below = nx.descendants(graph, name)
            for other in decoupled:
                if other in below:
                    self.problem(
                        f"decoupled step '{other}' (model '{self.steps[other].model}') is downstream of decoupled "
                        f"step '{name}' (model '{step.model}'): a path through a pipeline may hold at most one "
                        "decoupled step",
                        self.steps[other],
                    )
        if len(decoupled) < 2 or len(self.problems) > reported:
            return frozenset()  # one stream, or the problems above already say what to fix
        # needs[s]: the decoupled steps whose response step s cannot run without (a list of
        # alternatives needs only what all of them need).
        needs: dict[str, frozenset[str]] = {}
        none: frozenset[str] = frozenset()

        def needed(source: Source | TensorRef) -> frozenset[str]:
            found = [needs.get(r.step, none) if r.step is not None else none for r in source_refs(source)]
            return frozenset.intersection(*found)

        def names(steps: frozenset[str]) -> str:
            return " and ".join(f"'{s}'" for s in sorted(steps))

        for name in order:
            step = self.steps[name]
            member = self.members.get(name)
            optional = {t.name for t in member.input if t.optional} if member else set()
            got = frozenset({name}) if name in decoupled else none
            for key, source in step.inputs.items():
                if key not in optional:
                    got |= needed(source)
            if step.when is not None and isinstance(step.when.subject, TensorRef):
                got |= needed(step.when.subject)
            needs[name] = got
            if len(got) > 1:
                self.problem(
                    f"needs the responses of decoupled steps {names(got)} together, but each response carries "
                    "the outputs of one decoupled step",
                    step,
                )
        missing = set()
        for output in outputs:
            got = needed(output.source)
            if not got:
                continue
            missing.add(output.name)
            if len(got) == 1 and not output.optional:  # (more: its producer is reported above)
                self.problem(
                    f"output '{output.name}' comes only with the responses of decoupled step {names(got)}, "
                    "not with those of the others: declare it optional"
                )
        return frozenset(missing)

    def warn_unused(self, graph: nx.DiGraph) -> None:
        import networkx as nx

        read = {ref.name for s in self.spec.steps for ref in s.refs() if ref.step is None}
        read |= {ref.name for o in self.spec.outputs for ref in source_refs(o.source) if ref.step is None}
        for t in self.spec.inputs:
            if t.name not in read:
                log.warning("pipeline '%s': input '%s' is not read by any step", self.spec.name, t.name)
        needed: set[str] = set()
        for o in self.spec.outputs:
            for ref in source_refs(o.source):
                if ref.step is not None:
                    needed |= {ref.step} | nx.ancestors(graph, ref.step)
        for s in self.spec.steps:
            if s.name not in needed:
                log.warning("pipeline '%s': step '%s' feeds no output and never runs", self.spec.name, s.name)


def _exhaustive(conditions: list[Condition | None]) -> bool:
    """True when one of ``conditions`` always holds: the cases and the default of a switch
    (``S == a``, ``S == b``, ``S not in (a, b)`` on one subject ``S``)."""
    if any(c is None for c in conditions):
        return False
    subjects = {c.subject for c in conditions if c is not None}
    if len(subjects) != 1:
        return False
    cases = {c.value for c in conditions if c is not None and c.op is Op.EQ}
    defaults = [c for c in conditions if c is not None and c.op is Op.NOT_IN]
    return any(isinstance(d.value, tuple) and set(d.value) <= cases for d in defaults)


def served_config(config: ModelConfig, checked: CheckedPipeline) -> ModelConfig:
    """The config a checked pipeline is served with (and its callers are checked against):
    the pipeline's inputs and every output typed (declared entries
    are kept as written, so an ensemble's ``/config`` answers as on Triton), and decoupled
    when a step is, so clients know to stream; a pipeline built with the Python DSL gets the
    ``pipeline:`` section a YAML config would have (:mod:`.to_yaml`)."""
    spec = checked.spec
    declared = {t.name: t for t in config.output}
    outputs = tuple(declared.get(o.name) or output_config(o) for o in spec.outputs)
    inputs = config.input or tuple(
        TensorConfig(name=t.name, data_type=t.datatype, dims=t.shape, optional=t.optional)
        for t in spec.inputs
    )
    update: dict[str, Any] = {"input": inputs, "output": outputs, "max_batch_size": spec.max_batch_size}
    if config.backend_name == "pipeline" and config.pipeline is None:
        # A DSL pipeline: show its graph in /config as a YAML one shows its own.
        from .to_yaml import pipeline_section

        update["pipeline"] = pipeline_section(spec)
    if checked.decoupled:
        update["model_transaction_policy"] = TransactionPolicy(decoupled=True)
    return config.model_copy(update=update)


def output_config(output: OutputSpec) -> TensorConfig:
    """The config entry of a checked (so typed) pipeline output."""
    assert output.datatype is not None and output.shape is not None, "checked outputs are typed"
    return TensorConfig(
        name=output.name, data_type=output.datatype, dims=output.shape, optional=output.optional
    )


def _pads(value: Any, datatype: DataType) -> bool:
    """Whether a pad ``value`` can fill a tensor of ``datatype`` without changing meaning."""
    if datatype is DataType.BYTES:
        return isinstance(value, (str, bytes))
    if datatype is DataType.BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    kind = datatype.numpy_dtype.kind
    if kind == "f" or datatype is DataType.BF16:
        return True
    if not isinstance(value, int):
        return False
    info = np.iinfo(datatype.numpy_dtype)
    return info.min <= value <= info.max
