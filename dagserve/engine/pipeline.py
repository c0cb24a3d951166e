"""Pipelines served as models: loading, the executor, and per-step statistics.

A pipeline (Triton ensemble, YAML or Python DSL) is compiled and checked by :mod:`dagserve.dsl`
at load time, against the configs of its loaded members, and lowered to a
:class:`~dagserve.dsl.plan.Plan`. :class:`PipelineRunner` runs that plan for each request:

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
* a pipeline with a decoupled step is decoupled itself (:class:`.pipeline_stream.DecoupledPipelineRunner`):
  each response of that step runs the steps downstream of it and becomes one response of the
  pipeline, in order, then the final marker.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
from anyio.abc import TaskStatus

from ..backends.base import Outputs
from ..dsl.compile import compile_config, member_names
from ..dsl.conditions import Param, holds
from ..dsl.plan import Plan, Route, StepPlan, Wire, build_plan
from ..dsl.spec import PipelineSpec
from ..dsl.validate import Adapt, check_pipeline, output_config, served_config
from ..errors import (
    DagserveError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotFoundError,
    ModelNotReadyError,
    TimeoutError,
)
from ..repository.config import ModelConfig, TensorConfig
from ..repository.loader import ModelSource
from ..types import InferRequest, InferResponse, shape_matches
from .model import ModelState, ModelVersion
from .stats import Duration, ModelStatistics

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

_AS_IS, _EXPAND = Adapt.AS_IS, Adapt.EXPAND
R = TypeVar("R")

MAX_ROUTES = 256  # routes kept per pipeline, one per set of requested outputs seen


# -- loading ----------------------------------------------------------------------------------
async def load_pipeline(
    server: Any, source: ModelSource, config: ModelConfig, spec: PipelineSpec | None = None
) -> PipelineRunner:
    """Compile (unless ``spec`` is given), check and plan the pipeline; return its runner.

    Members must be loaded already. Raises ConfigError naming the file, step and tensor of
    every problem found, or the member that is not ready and why.
    """
    if spec is None:
        spec = compile_config(config, model_dir=source.path, config_path=source.config_path)
    members: list[ModelConfig] = []

    def member(model: str, version: int) -> ModelConfig:
        found = _member_config(server, model, version)
        members.append(found)
        return found

    checked = check_pipeline(spec, member)
    plan, config = build_plan(checked), served_config(config, checked)
    runner: PipelineRunner
    if config.model_transaction_policy.decoupled:
        from .pipeline_stream import DecoupledPipelineRunner  # its module imports this one

        runner = DecoupledPipelineRunner(
            server.infer, plan, config, checked.may_be_missing, infer_stream=server.infer_stream
        )
    else:
        runner = PipelineRunner(server.infer, plan, config, checked.may_be_missing)
    runner.priority_levels = min(
        (m.dynamic_batching.priority_levels for m in members
         if m.dynamic_batching is not None and m.dynamic_batching.priority_levels and m.batching),
        default=0,
    )
    return runner


def _member_config(server: Any, model: str, version: int) -> ModelConfig:
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
class StepStatistics:
    """Counters of one step: calls that succeeded, failed or were skipped; time waiting for a
    slot under ``max_inflight_requests`` (queue) and in the member's ``infer`` (compute,
    which includes the member's own queueing; see the member's own statistics for that)."""

    __slots__ = ("compute", "fail", "model", "name", "queue", "skipped", "success")

    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model
        self.success = Duration()
        self.fail = Duration()
        self.skipped = 0
        self.queue = Duration()
        self.compute = Duration()

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "success": self.success.as_dict(),
            "fail": self.fail.as_dict(),
            "skipped": {"count": self.skipped},
            "queue": self.queue.as_dict(),
            "compute_infer": self.compute.as_dict(),
        }


class PipelineStatistics(ModelStatistics):
    """A pipeline's statistics in Triton's shape plus ``steps``: one entry per step.

    Clients that do not know ``steps`` ignore it (tritonclient's JSON and protobuf parsing).
    """

    def __init__(self, name: str, version: str) -> None:
        super().__init__(name, version)
        self.steps: list[StepStatistics] = []

    def snapshot(self) -> dict[str, Any]:
        data = super().snapshot()
        data["steps"] = [s.snapshot() for s in self.steps]
        return data


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
        if runner is not None:
            runner.bind(self.stats)
            self._may_be_missing = runner.may_be_missing
            # A priority every step can take is checked before any step runs.
            self._priority_levels = runner.priority_levels
            self._members = tuple((s.name, s.model, s.version) for s in runner.plan.steps)

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
    server: Any,
    source: ModelSource,
    config: ModelConfig,
    *,
    number: int,
    spec: PipelineSpec | None = None,
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
    try:
        runner = await load_pipeline(server, source, config, spec)
        config = runner.config
    except Exception as exc:  # noqa: BLE001 - reported through the version's state and reason
        failure = exc
    def member_problem(model: str, version: str) -> str:
        try:
            found = server.get_version(model, version)
        except DagserveError as exc:
            return str(exc)
        return "" if found.ready else f"model '{model}' is not ready" + (f": {found.reason}" if found.reason else "")

    version = PipelineVersion(
        name=source.name, version=number, config=config, runner=runner, member_problem=member_problem, **kwargs
    )

    async def load() -> PipelineRunner:
        if failure is not None:
            raise failure
        assert runner is not None
        return runner

    return version, load


# -- the executor -----------------------------------------------------------------------------
InferCall = Callable[[str, str, InferRequest], Awaitable[InferResponse]]
"""``Server.infer``: how a step calls its member."""

Emit = Callable[[InferResponse], Awaitable[None]]
InferStreamCall = Callable[[str, str, InferRequest, Emit], Awaitable[None]]
"""``Server.infer_stream``: how a step calls a decoupled member."""


def cached_route(cache: dict[frozenset[str] | None, R], request: InferRequest,
                 build: Callable[[frozenset[str] | None], R]) -> R:
    """The route for the outputs ``request`` asks for, built once per set of outputs (at most
    :data:`MAX_ROUTES` kept, so odd requests cannot grow the cache without bound)."""
    wanted = request.output_names()
    key = None if wanted is None else frozenset(wanted)
    route = cache.get(key)
    if route is None:
        route = build(key)
        if len(cache) < MAX_ROUTES:
            cache[key] = route
    return route


def request_timeout(request: InferRequest) -> float | None:
    """The request's whole-pipeline deadline in seconds, from its ``timeout`` parameter (µs,
    Triton's name), or ``None``. Every step sees the same parameter too, for its own queue.

    Raises:
        InvalidInputError: a timeout that is not a positive integer.
    """
    value = request.parameters.get("timeout")
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"parameter 'timeout' must be a whole number of microseconds, not {value!r}")
    return value / 1e6


class PipelineRunner:
    """Runs a :class:`Plan` for each request (the :class:`~dagserve.engine.model.Runner` of a
    pipeline version). ``config`` is the complete config the version serves."""

    def __init__(
        self, infer: InferCall, plan: Plan, config: ModelConfig, may_be_missing: frozenset[str]
    ) -> None:
        self.config = config
        self.may_be_missing = may_be_missing
        self.priority_levels = 0  # the fewest priority levels among the members that have them
        self.plan = plan
        self._infer = infer
        self._steps = plan.steps
        self._inputs = plan.inputs
        self._routes: dict[frozenset[str] | None, Route] = {None: plan.route(None)}
        self._stats = PipelineStatistics(plan.name, "")
        self._step_stats = [StepStatistics(s.name, s.model) for s in plan.steps]
        self._stats.steps = self._step_stats
        self._limiters = (
            [anyio.CapacityLimiter(plan.max_inflight_requests) for _ in plan.steps]
            if plan.max_inflight_requests
            else None
        )

    def bind(self, stats: PipelineStatistics) -> None:
        """Record into ``stats`` (the serving version's) from now on."""
        stats.steps = self._step_stats
        self._stats = stats

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background: every request runs in its caller's task."""
        task_status.started()

    async def submit(self, request: InferRequest, batch_size: int) -> Mapping[str, np.ndarray]:
        """Run the pipeline for one validated request; return the outputs that exist.

        Raises:
            DagserveError: the first step failure, of the member's error class, its message
                prefixed with the pipeline, step and model. Cancelling the caller cancels
                every step in flight.
        """
        start = time.perf_counter_ns()
        timeout = request_timeout(request)
        try:
            if timeout is None:
                outputs = await self._execute(request)
            else:
                with anyio.fail_after(timeout):
                    outputs = await self._execute(request)
        except builtins.TimeoutError:
            self._stats.record_failure(total_ns=time.perf_counter_ns() - start, reason="REJECTED")
            raise TimeoutError(
                f"pipeline '{self.plan.name}' did not finish within its request timeout "
                f"({request.parameters['timeout']} µs); its steps were cancelled"
            ) from None
        except BaseException as exc:
            self._stats.record_failure(total_ns=time.perf_counter_ns() - start, error=exc)
            raise
        total = time.perf_counter_ns() - start
        self._stats.record_success(total_ns=total, queue_ns=0)
        self._stats.record_execution(batch_size=batch_size, requests=1, infer_ns=total)
        return outputs

    def _initial_values(self, request: InferRequest) -> list[Any]:
        """The tensor slots of one request, holding its pipeline inputs so far."""
        values: list[Any] = [None] * self.plan.slot_count
        given = request.inputs
        for name, slot in self._inputs:
            values[slot] = given.get(name)
        return values

    async def _execute(self, request: InferRequest) -> dict[str, np.ndarray]:
        route = cached_route(self._routes, request, self.plan.route)
        values = self._initial_values(request)
        if route.sequential:
            steps = self._steps
            for i in route.steps:
                await self._step(steps[i], values, request)
        elif route.steps:
            await self._concurrently(route, values, request)
        result = {}
        for wire in route.outputs:
            value = read_wire(wire, values)
            if value is not None:
                result[wire.name] = value
        return result

    async def _concurrently(self, route: Route, values: list[Any], request: InferRequest) -> None:
        """Run the route's steps as their inputs become ready. A finished step continues with
        one newly ready successor in its own task and starts the others in new tasks."""
        steps = self._steps
        remaining = list(route.remaining)
        successors = route.successors
        failure: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def chain(i: int) -> None:
                try:
                    while True:
                        await self._step(steps[i], values, request)
                        follow = -1
                        for j in successors[i]:
                            remaining[j] -= 1
                            if remaining[j] == 0:
                                if follow < 0:
                                    follow = j
                                else:
                                    tg.start_soon(chain, j)
                        if follow < 0:
                            return
                        i = follow
                except Exception as exc:  # noqa: BLE001 - the first failure cancels the other steps
                    if not failure:
                        failure.append(exc)
                    tg.cancel_scope.cancel()

            for root in route.roots[1:]:
                tg.start_soon(chain, root)
            await chain(route.roots[0])
        if failure:
            raise failure[0]

    # -- one step ------------------------------------------------------------------------------
    async def _step(self, step: StepPlan, values: list[Any], request: InferRequest) -> None:
        stats = self._step_stats[step.index]
        gate = step.gate
        if gate is not None:
            actual = values[gate.slot] if gate.param is None else request.parameters.get(gate.param)
            if not holds(gate.condition, actual):
                stats.skipped += 1
                return
        inputs: dict[str, Any] | None
        if step.simple is not None:
            inputs = {}
            for name, slot in step.simple:
                value = values[slot]
                if value is None:
                    inputs = None
                    break
                inputs[name] = value
        else:
            inputs = self._gather(step, values)
        if inputs is None:
            stats.skipped += 1
            return
        outputs: Mapping[str, np.ndarray]
        if step.mapped:
            outputs = await self._map(step, inputs, request)
        elif step.loop is not None:
            outputs = await self._loop(step, inputs, request)
        else:
            outputs = await self._call(step, inputs, request)
        for name, slot in step.outputs:
            values[slot] = outputs.get(name)  # absent: an optional output of a nested pipeline

    @staticmethod
    def _gather(step: StepPlan, values: list[Any]) -> dict[str, Any] | None:
        inputs = {}
        for wire in step.wires:
            value = read_wire(wire, values)
            if value is None:
                if wire.required:
                    return None
                continue
            inputs[wire.name] = value
        return inputs

    async def _call(self, step: StepPlan, inputs: dict[str, Any], request: InferRequest) -> Outputs:
        sub = InferRequest(
            inputs=inputs,
            id=request.id,
            datatypes=step.datatypes,
            parameters=request.parameters,
            outputs=step.requested,
        )
        stats = self._step_stats[step.index]
        start = time.perf_counter_ns()
        try:
            if self._limiters is None:
                response: InferResponse = await self._infer(step.model, step.version, sub)
                queued = start
            else:
                async with self._limiters[step.index]:
                    queued = time.perf_counter_ns()
                    response = await self._infer(step.model, step.version, sub)
        except DagserveError as exc:
            stats.fail.add(time.perf_counter_ns() - start)
            raise self._attributed(exc, step) from exc
        end = time.perf_counter_ns()
        stats.success.add(end - start)
        stats.queue.add(queued - start)
        stats.compute.add(end - queued)
        return response.outputs

    async def _map(
        self, step: StepPlan, inputs: dict[str, Any], request: InferRequest
    ) -> dict[str, np.ndarray]:
        """Call the model once per element of the mapped inputs, all at once (so the calls
        batch at the model), and stack the results; no elements: empty outputs, no call."""
        mapped = [w.name for w in step.wires if w.mapped and w.name in inputs]
        count = len(inputs[mapped[0]]) if mapped else 0  # an absent optional input has no elements
        for name in mapped[1:]:
            if len(inputs[name]) != count:
                raise InvalidInputError(
                    f"pipeline '{self.plan.name}', step '{step.name}': mapped inputs differ in length "
                    f"('{mapped[0]}' has {count}, '{name}' has {len(inputs[name])})"
                )
        if count == 0:
            return {name: np.empty(shape, dtype) for name, _, dtype, shape in step.empty_outputs}
        keep = step.member_batching

        def element(i: int) -> dict[str, Any]:
            # A batching member gets a batch of one (a view); a non-batching one the element.
            part = dict(inputs)
            for name in mapped:
                part[name] = inputs[name][i : i + 1] if keep else inputs[name][i, ...]
            return part

        results: list[Outputs] = [{}] * count
        if count == 1:
            results[0] = await self._call(step, element(0), request)
        else:
            failure: list[Exception] = []
            async with anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    try:
                        results[i] = await self._call(step, element(i), request)
                    except Exception as exc:  # noqa: BLE001 - the first failure cancels the others
                        if not failure:
                            failure.append(exc)
                        tg.cancel_scope.cancel()

                for i in range(count):
                    tg.start_soon(one, i)
            if failure:
                raise failure[0]
        return self._stack(step, results, np.concatenate if keep else np.stack)

    def _stack(self, step: StepPlan, results: list[Outputs], join: Callable[[list[Any]], Any]) -> dict[str, Any]:
        """Join the per-item results of a mapped step, output by output.

        Raises:
            ModelExecutionError: an item lacks an output, or items answered in different shapes
                (they cannot be stacked); the message names the pipeline, step, output, item
                index and both shapes.
        """
        where = f"pipeline '{self.plan.name}', step '{step.name}' (model '{step.model}')"
        joined = {}
        for name, _ in step.outputs:
            parts = [r.get(name) for r in results]
            first = parts[0]
            for index, part in enumerate(parts):
                if part is None:
                    raise ModelExecutionError(f"{where}: map item {index} did not return output '{name}'")
                if first is not None and tuple(part.shape) != tuple(first.shape):
                    raise ModelExecutionError(
                        f"{where}: map item {index} returned output '{name}' with shape {list(part.shape)}, "
                        f"but item 0 returned shape {list(first.shape)}; the items' results are stacked, "
                        "so every item must return the same shape"
                    )
            joined[name] = join(parts)
        return joined

    async def _loop(self, step: StepPlan, inputs: dict[str, Any], request: InferRequest) -> Outputs:
        loop = step.loop
        assert loop is not None
        outputs: Outputs = {}
        for _ in range(loop.max_iterations):
            outputs = await self._call(step, inputs, request)
            until = loop.until
            if until is not None:
                subject = until.subject
                actual = (
                    request.parameters.get(subject.name)
                    if isinstance(subject, Param)
                    else outputs.get(subject.name)
                )
                if holds(until, actual):
                    break
            inputs = dict(inputs)
            for fed, produced in loop.carry:
                inputs[fed] = outputs[produced]
        return outputs

    def _attributed(self, exc: DagserveError, step: StepPlan) -> DagserveError:
        message = f"pipeline '{self.plan.name}', step '{step.name}' (model '{step.model}'): {exc}"
        try:
            return type(exc)(message)
        except Exception:  # noqa: BLE001 - a subclass with another constructor
            return ModelExecutionError(message)


def read_wire(wire: Wire, values: list[Any]) -> Any:
    """The first present candidate of ``wire``, its batch dimension adapted (views only)."""
    for candidate in wire.candidates:
        value = values[candidate.slot]
        if value is None:
            continue
        how = candidate.adapt
        if how is _AS_IS:
            return value
        if how is _EXPAND:
            return value[np.newaxis]
        # Triton drops a leading batch of 1 only when the tensor does not fit as it is.
        if value.ndim and value.shape[0] == 1 and not shape_matches(value.shape, wire.dims):
            return value[0]
        return value
    return None
