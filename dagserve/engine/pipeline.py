"""Pipelines served as models: loading, checking and planning, and the served version.

A pipeline (Triton ensemble, YAML or Python DSL) is compiled and checked by :mod:`dagserve.dsl`
at load time, against the configs of its loaded members, and lowered to a
:class:`~dagserve.dsl.plan.Plan`. :class:`~.pipeline_runner.PipelineRunner` runs that plan for
each request (:mod:`.pipeline_runner` states how):

* a step starts as soon as its inputs exist; independent branches run concurrently, while a
  chain (no two steps can overlap) runs step after step in the caller's task, spawning nothing;
* each step is an ordinary ``server.infer`` call, so it goes through the member's own
  scheduler and concurrent pipeline requests are batched at every node;
* tensors go from step to step as the same numpy arrays (no copies); request parameters, id
  and priority/timeout parameters reach every step;
* only the steps needed for the requested outputs run; a step whose ``when`` fails, or whose
  required input does not exist, is skipped;
* the first failing step cancels the rest of the request, and its error keeps its class
  (a bad input stays a bad input) with the pipeline, step and model prefixed to the message;
* a pipeline with a decoupled step is decoupled itself (:class:`.pipeline_stream.DecoupledPipelineRunner`,
  which extends the core):
  each response of that step runs the steps downstream of it and becomes one response of the
  pipeline, in order, then the final marker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import Outputs
from ..dsl.compile import compile_config, member_names
from ..dsl.plan import Plan, build_plan
from ..dsl.spec import PipelineSpec
from ..dsl.typecheck import check_pipeline, output_config, served_config
from ..errors import DagserveError, InvalidInputError, ModelNotFoundError, ModelNotReadyError
from ..repository.config import ModelConfig, TensorConfig
from ..repository.loader import ModelSource
from ..types import InferRequest, InferResponse
from .functions import WithFunctions
from .model import ModelState, ModelVersion, Runner
from .pipeline_runner import Members, PipelineRunner, PipelineStatistics, StepStatistics
from .pipeline_stream import DecoupledPipelineRunner

StartFunctions = Callable[[PipelineSpec], Awaitable[Mapping[str, ModelVersion]]]
"""Loads the versions that serve a pipeline's function steps, by model name."""

__all__ = [
    "PipelineRunner",
    "PipelineStatistics",
    "PipelineVersion",
    "StepStatistics",
    "load_order",
    "load_pipeline",
    "pipeline_source",
    "pipeline_version",
]


# -- loading ----------------------------------------------------------------------------------
async def load_pipeline(
    server: Members, source: ModelSource, config: ModelConfig, spec: PipelineSpec | None = None,
    start_functions: StartFunctions | None = None,
) -> PipelineRunner:
    """Compile (unless ``spec`` is given), check and plan the pipeline; return its runner.

    Members must be loaded already; ``start_functions`` loads the versions serving the
    pipeline's function steps (:mod:`.functions`), which the runner then calls directly.
    Raises ConfigError naming the file, step and tensor of every problem found, or the member
    that is not ready and why.
    """
    if spec is None:
        spec = compile_config(config, model_dir=source.path, config_path=source.config_path)
    if start_functions is not None and any(s.function is not None for s in spec.steps):
        server = WithFunctions(server, await start_functions(spec))
    members: list[ModelConfig] = []

    def member(model: str, version: int) -> ModelConfig:
        found = _member_config(server, model, version)
        members.append(found)
        return found

    checked = check_pipeline(spec, member, known_models=server.model_names())
    plan, config = build_plan(checked), served_config(config, checked)
    kind = DecoupledPipelineRunner if config.model_transaction_policy.decoupled else PipelineRunner
    runner = kind(server, plan, config, checked.may_be_missing)
    runner.priority_levels = min(
        (m.dynamic_batching.priority_levels for m in members
         if m.dynamic_batching is not None and m.dynamic_batching.priority_levels and m.batching),
        default=0,
    )
    return runner


def _member_config(server: Members, model: str, version: int) -> ModelConfig:
    try:
        found: ModelVersion = server.get_version(model, "" if version < 0 else str(version))
    except ModelNotReadyError:
        # A member loaded but not ready now (a remote model whose server is unreachable): the
        # pipeline loads, and is ready when the member is (see PipelineVersion.missing_member).
        loaded = server.loaded_version(model) if version < 0 else None
        if loaded is None:
            raise
        found = loaded
    if found.state is not ModelState.READY:
        raise ModelNotReadyError(
            f"model '{model}' version {found.version} is not ready: {found.reason or found.state.value}"
        )
    return found.config


def _inherited_labels(server: Members, plan: Plan) -> dict[str, tuple[str, ...]]:
    """The class labels each pipeline output takes from the step output it is (as Triton's
    ensembles take their members' labels for outputs without a ``label_filename`` of their
    own): an output read from one step output of a member with labels for it; one joined
    from several (a switch) only when they all have the same labels."""
    producers = {slot: (step, name) for step in plan.steps for name, slot in step.outputs}
    found: dict[str, tuple[str, ...]] = {}
    for output, wire in plan.outputs.items():
        candidates: set[tuple[str, ...]] = set()
        for candidate in wire.candidates:
            producer = producers.get(candidate.slot)
            if producer is None:  # a pipeline input passed through
                candidates.add(())
                continue
            step, name = producer
            try:
                member = server.get_version(step.model, step.version)
            except DagserveError:
                candidates.add(())
                continue
            candidates.add(tuple(member.labels.get(name, ())))
        if len(candidates) == 1:
            (labels,) = candidates
            if labels:
                found[output] = labels
    return found


def pipeline_source(spec: PipelineSpec) -> ModelSource:
    """A :class:`ModelSource` for a pipeline built in process (``Server.add_pipeline``)."""
    config = ModelConfig(
        name=spec.name,
        backend="pipeline",
        max_batch_size=spec.max_batch_size,
        input=tuple(
            TensorConfig(name=t.name, data_type=t.datatype, dims=t.shape, optional=t.optional)
            for t in spec.inputs
        ),
        output=tuple(
            output_config(o) for o in spec.outputs if o.datatype is not None and o.shape is not None
        ),
    )
    origin = Path(spec.origin.rsplit(":", 1)[0]) if spec.origin else Path(".")
    return ModelSource(name=spec.name, path=origin.parent, config=config, config_path=None, versions=(1,))


def load_order(sources: Iterable[ModelSource]) -> list[list[ModelSource]]:
    """Pipelines grouped so that each group only calls models and pipelines of earlier groups
    (nested ensembles load after their inner ones). Pipelines whose members cannot be read
    without importing code come last; a cycle leaves its pipelines to fail their checks."""
    import networkx as nx

    by_name = {s.name: s for s in sources}
    members = {name: member_names(s.config) if s.config is not None else set() for name, s in by_name.items()}
    unknown = [by_name[name] for name, m in members.items() if m is None]
    graph = nx.DiGraph()
    graph.add_nodes_from(name for name, m in members.items() if m is not None)
    for name, called in members.items():
        graph.add_edges_from((m, name) for m in called or () if m in graph and m != name)
    try:
        groups = [[by_name[n] for n in sorted(g)] for g in nx.topological_generations(graph)]
    except nx.NetworkXUnfeasible:
        groups = [[by_name[n] for n in sorted(graph)]]
    return [g for g in (*groups, unknown) if g]


# -- statistics -------------------------------------------------------------------------------
class PipelineVersion(ModelVersion):
    """A served pipeline version. It is created after the pipeline was checked, so its config
    is complete (inferred output types, inputs declared in a pipeline file); its statistics
    have per-step entries; its responses may lack the outputs of skipped branches."""

    def __init__(
        self, *, runner: PipelineRunner | None, member_problem: Callable[[str, str], str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.stats = PipelineStatistics(self.name, self.version_str)
        self._may_be_missing: frozenset[str] = frozenset()
        self._members: tuple[tuple[str, str, str], ...] = ()
        self._member_problem = member_problem
        self._reason = ""
        self._one_of: tuple[tuple[str, ...], ...] = ()
        if runner is not None:
            self._one_of = runner.plan.one_of
            runner.bind(self.stats)
            self._may_be_missing = runner.may_be_missing
            # A priority every step can take is checked before any step runs.
            self._priority_levels = runner.priority_levels
            self._members = tuple((s.name, s.model, s.version) for s in runner.plan.steps)

    def validate(self, request: InferRequest) -> int:
        """:meth:`ModelVersion.validate`, then the pipeline's ``one_of`` rules.

        Raises:
            InvalidInputError: as ModelVersion's; or a request that gives none or several of
                the inputs of a ``one_of`` group, naming them.
        """
        batch = super().validate(request)
        for group in self._one_of:
            given = [name for name in group if name in request.inputs]
            if len(given) != 1:
                names = ", ".join(f"'{n}'" for n in group)
                found = " and ".join(f"'{n}'" for n in given) if given else "none of them"
                raise InvalidInputError(
                    f"pipeline '{self.name}' needs exactly one of the inputs {names}, and the request gives {found}"
                )
        return batch

    def _make_runner(self, loaded: Any) -> Runner:
        """``load`` returns the pipeline's runner, made when the pipeline was checked."""
        assert isinstance(loaded, PipelineRunner)
        return loaded

    def missing_member(self) -> str:
        """Why a step's member cannot serve now (unloaded, not ready), or "" when all can.

        Members are checked when the pipeline loads; this is for a member unloaded later: the
        pipeline is then not ready until the member is loaded back."""
        if self._member_problem is None:
            return ""
        for step, model, version in self._members:
            problem = self._member_problem(model, version)
            if problem:
                return f"step '{step}' cannot run: {problem}"
        return ""

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and not self.missing_member()

    @property
    def reason(self) -> str:
        """Why the version is not ready: its load failure, or a member that is gone."""
        if self._reason or self.state is not ModelState.READY:
            return self._reason
        return self.missing_member()

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = value

    async def infer(self, request: InferRequest) -> InferResponse:
        try:
            return await super().infer(request)
        except (ModelNotFoundError, ModelNotReadyError):
            self._explain_missing_member()
            raise

    async def infer_stream(self, request: InferRequest, emit: Callable[[InferResponse], Awaitable[None]]) -> None:
        try:
            await super().infer_stream(request, emit)
        except (ModelNotFoundError, ModelNotReadyError):
            self._explain_missing_member()
            raise

    def _explain_missing_member(self) -> None:
        # Checked only after a failure, so the request path pays nothing for it.
        missing = self.missing_member()
        if missing:
            raise ModelNotReadyError(f"pipeline '{self.name}' version {self.version} is not ready: {missing}") from None

    def check_outputs(self, outputs: Outputs, wanted: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        if self._may_be_missing:
            names = wanted or tuple(self.config.output_specs())
            wanted = tuple(n for n in names if n in outputs or n not in self._may_be_missing)
            if not wanted:
                return {}
        return super().check_outputs(outputs, wanted)


async def pipeline_version(
    server: Members,
    source: ModelSource,
    config: ModelConfig,
    *,
    number: int,
    spec: PipelineSpec | None = None,
    start_functions: StartFunctions | None = None,
    **kwargs: Any,
) -> tuple[PipelineVersion, Callable[[], Awaitable[PipelineRunner]]]:
    """Prepare version ``number`` of a pipeline: compile and check it now (its members are
    loaded), and return the version to serve with the ``load`` callable its ``serve`` awaits.

    Never raises for a bad pipeline: ``load`` raises the ConfigError instead, so the version
    is FAILED with that reason, like a model that fails to load. ``kwargs`` go to
    :class:`ModelVersion` (``platform``, ``cache``).
    """
    runner: PipelineRunner | None = None
    failure: Exception | None = None
    labels: Mapping[str, tuple[str, ...]] = kwargs.pop("labels", None) or {}
    try:
        runner = await load_pipeline(server, source, config, spec, start_functions)
        config = runner.config
        labels = {**_inherited_labels(server, runner.plan), **labels}
    except Exception as exc:  # noqa: BLE001 - reported through the version's state and reason
        failure = exc
    members = runner.members if runner is not None else server

    def member_problem(model: str, version: str) -> str:
        try:
            found = members.get_version(model, version)
        except DagserveError as exc:
            return str(exc)
        return "" if found.ready else f"model '{model}' is not ready" + (f": {found.reason}" if found.reason else "")

    version = PipelineVersion(
        name=source.name, version=number, config=config, runner=runner, member_problem=member_problem,
        labels=labels, **kwargs,
    )

    async def load() -> PipelineRunner:
        if failure is not None:
            raise failure
        assert runner is not None
        return runner

    return version, load
