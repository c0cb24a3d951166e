"""The pipeline executor: runs a :class:`~dagserve.dsl.plan.Plan` for each request.

:class:`PipelineRunner` is the core, for every pipeline:

* a step starts as soon as its inputs exist; independent branches run concurrently, while a
  chain (no two steps can overlap) runs step after step in the caller's task, spawning nothing;
* each step is an ordinary call of the member through :class:`Members` (``Server.infer``), so
  it goes through the member's own scheduler and concurrent pipeline requests are batched at
  every node;
* tensors go from step to step as the same numpy arrays (no copies); request parameters, id
  and priority/timeout parameters reach every step;
* only the steps needed for the requested outputs run; a step whose ``when`` fails, or whose
  required input does not exist, is skipped (:meth:`PipelineRunner.inputs_for`);
* the first failing step cancels the rest of the request (:class:`FirstFailure`), and its
  error keeps its class (a bad input stays a bad input) with the pipeline, step and model
  prefixed to the message.

A pipeline with a decoupled step extends this core (:mod:`.pipeline_stream`). Loading and
serving a pipeline as a model version is :mod:`.pipeline`.
"""

from __future__ import annotations

import builtins
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import numpy as np
from anyio.abc import TaskGroup, TaskStatus

from ..backends.base import Outputs
from ..dsl.conditions import Condition, ConditionTypeError, Param, holds
from ..dsl.plan import Plan, Route, StepPlan, Wire
from ..dsl.typecheck import Adapt
from ..errors import DagserveError, InvalidInputError, ModelExecutionError, RequestTimeoutError
from ..repository.config import ModelConfig
from ..tracing.context import CURRENT as _TRACE
from ..types import InferRequest, InferResponse, shape_matches
from .chain import ChainWorkers, run_chain
from .gather import gather
from .stats import Duration, ModelStatistics

if TYPE_CHECKING:
    from .model import ModelVersion

__all__ = [
    "Emit",
    "FirstFailure",
    "Members",
    "PipelineRunner",
    "PipelineStatistics",
    "StepStatistics",
    "cached_route",
    "collect",
    "read_wire",
    "request_timeout",
]

_AS_IS, _EXPAND = Adapt.AS_IS, Adapt.EXPAND
R = TypeVar("R")

MAX_ROUTES = 256  # routes kept per pipeline, one per set of requested outputs seen

Emit = Callable[[InferResponse], Awaitable[None]]
"""Where a streaming call sends each response."""


class Members(Protocol):
    """What a pipeline needs of the server that serves it: its members, by name and version
    (``""`` = the newest ready one). :class:`~dagserve.engine.server.Server` is one."""

    def get_version(self, name: str, version: str = "") -> ModelVersion:
        """The member's served version. Raises ModelNotFoundError / ModelNotReadyError."""
        ...

    def model_names(self) -> list[str]:
        """The names of the models served (for "did you mean" hints)."""
        ...

    def loaded_version(self, name: str) -> ModelVersion | None:
        """The newest loaded version of ``name``, ready or not (``None``: none loaded)."""
        ...

    async def infer(self, name: str, version: str, request: InferRequest) -> InferResponse:
        """One call of a member. Raises DagserveError."""
        ...

    async def infer_stream(self, name: str, version: str, request: InferRequest, emit: Emit) -> None:
        """One call of a (decoupled) member, each response to ``emit``. Raises DagserveError."""
        ...


class FirstFailure:
    """A task group for the steps of one request: the first task that fails cancels the
    others, and leaving the group raises that failure as itself (never an exception group).
    Cancellation of the caller passes through unchanged."""

    __slots__ = ("_failure", "_tg")

    def __init__(self) -> None:
        self._tg: TaskGroup = anyio.create_task_group()
        self._failure: Exception | None = None

    async def __aenter__(self) -> FirstFailure:  # noqa: PYI034 - not subclassed
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        suppressed = await self._tg.__aexit__(exc_type, exc, tb)  # e.g. its own cancellation
        if self._failure is not None:
            raise self._failure
        return bool(suppressed)

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``func(*args)`` in a new task of the group."""
        self._tg.start_soon(self.run, func, *args)

    async def run(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``func(*args)`` in the current task, as a member of the group."""
        try:
            await func(*args)
        except Exception as exc:  # noqa: BLE001 - the first failure cancels the other steps
            if self._failure is None:
                self._failure = exc
            self._tg.cancel_scope.cancel()


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


# -- the executor -----------------------------------------------------------------------------
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
    pipeline version), calling its steps' models through ``members``. ``config`` is the
    complete config the version serves."""

    deadline = True
    """Whether a request's ``timeout`` parameter bounds the whole pipeline."""

    def __init__(
        self, members: Members, plan: Plan, config: ModelConfig, may_be_missing: frozenset[str]
    ) -> None:
        self.config = config
        self.may_be_missing = may_be_missing
        self.priority_levels = 0  # the fewest priority levels among the members that have them
        self.plan = plan
        self.members = members
        self._infer = members.infer  # bound once: every step of every request calls it
        self._infer_stream = members.infer_stream
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
        self._workers: ChainWorkers | None = None  # while run() runs, unless max_inflight_requests

    def bind(self, stats: PipelineStatistics) -> None:
        """Record into ``stats`` (the serving version's) from now on."""
        stats.steps = self._step_stats
        self._stats = stats

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Every request runs in its caller's task; this owns the chain threads (:mod:`.chain`)
        from when the pipeline serves until it is cancelled, then ends them."""
        self._workers = None if self._limiters is not None else ChainWorkers(self.plan.name)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            workers, self._workers = self._workers, None
            if workers is not None:
                workers.close()

    async def submit(self, request: InferRequest, batch_size: int) -> Mapping[str, np.ndarray]:
        """Run the pipeline for one validated request; return the outputs that exist.

        Raises:
            DagserveError: the first step failure, of the member's error class, its message
                prefixed with the pipeline, step and model. Cancelling the caller cancels
                every step in flight.
        """
        start = time.perf_counter_ns()
        timeout = request_timeout(request) if self.deadline else None
        try:
            if timeout is None:
                outputs = await self._execute(request)
            else:
                with anyio.fail_after(timeout):
                    outputs = await self._execute(request)
        except builtins.TimeoutError:
            self._stats.record_failure(total_ns=time.perf_counter_ns() - start, reason="REJECTED")
            raise RequestTimeoutError(
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
        await self._run(route, values, request)
        return collect(route.outputs, values)

    async def _run(self, route: Route, values: list[Any], request: InferRequest) -> None:
        """Run the steps of ``route`` on ``values``: a chain in this task, else concurrently."""
        if route.sequential:
            steps = self._steps
            order = route.steps
            if self._workers is not None and len(order) > 1 and _TRACE.get() is None:
                order = order[await run_chain(self, self._workers, order, values, request):]
            for i in order:
                await self._step(steps[i], values, request)
        elif route.steps:
            await self._concurrently(route, values, request)

    async def _concurrently(self, route: Route, values: list[Any], request: InferRequest) -> None:
        """Run the route's steps as their inputs become ready. A finished step continues with
        one newly ready successor in its own task and starts the others in new tasks."""
        steps = self._steps
        remaining = list(route.remaining)
        successors = route.successors
        async with FirstFailure() as group:

            async def chain(i: int) -> None:
                while True:
                    await self._step(steps[i], values, request)
                    follow = -1
                    for j in successors[i]:
                        remaining[j] -= 1
                        if remaining[j] == 0:
                            if follow < 0:
                                follow = j
                            else:
                                group.start_soon(chain, j)
                    if follow < 0:
                        return
                    i = follow

            for root in route.roots[1:]:
                group.start_soon(chain, root)
            await group.run(chain, route.roots[0])

    # -- one step ------------------------------------------------------------------------------
    async def _step(self, step: StepPlan, values: list[Any], request: InferRequest) -> None:
        inputs = self.inputs_for(step, values, request)
        if inputs is None:
            return
        outputs: Mapping[str, np.ndarray]
        if _TRACE.get() is not None:  # the request is traced
            outputs = await self._traced_step(step, inputs, request)
        elif step.mapped:
            outputs = await self._map(step, inputs, request)
        elif step.loop is not None:
            outputs = await self._loop(step, inputs, request)
        else:
            outputs = await self._call(step, inputs, request)
        for name, slot in step.outputs:
            values[slot] = outputs.get(name)  # absent: an optional output of a nested pipeline

    async def _traced_step(self, step: StepPlan, inputs: dict[str, Any], request: InferRequest) -> Outputs:
        """The step's calls in a span of the step, under the pipeline's span."""
        parent = _TRACE.get()
        assert parent is not None
        span = parent.step(self.plan.name, step.name, step.model)
        token = _TRACE.set(span)
        try:
            if step.mapped:
                outputs: Outputs = await self._map(step, inputs, request)
            elif step.loop is not None:
                outputs = await self._loop(step, inputs, request)
            else:
                outputs = await self._call(step, inputs, request)
        except BaseException as exc:
            span.end(exc)
            raise
        else:
            span.end()
        finally:
            _TRACE.reset(token)
        return outputs

    def inputs_for(
        self, step: StepPlan, values: list[Any], request: InferRequest, later: list[Callable[[], None]] | None = None
    ) -> dict[str, Any] | None:
        """The inputs of ``step`` in this request, or None (counted as skipped) when its
        ``when`` does not hold or a required input does not exist. With ``later`` (off the
        event loop, :mod:`.chain`) the count is appended to it instead."""
        gate = step.gate
        if gate is not None:
            actual = values[gate.slot] if gate.param is None else request.parameters.get(gate.param)
            if not self._holds(step, gate.condition, actual):
                self._skipped(step, later)
                return None
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
            self._skipped(step, later)
        return inputs

    def _skipped(self, step: StepPlan, later: list[Callable[[], None]] | None) -> None:
        if later is not None:
            later.append(functools.partial(self._skipped, step, None))
        else:
            self._step_stats[step.index].skipped += 1

    def step_statistics(self, step: StepPlan) -> StepStatistics:
        """The counters of ``step``."""
        return self._step_stats[step.index]

    @property
    def statistics(self) -> PipelineStatistics:
        """The statistics of the version this runner serves."""
        return self._stats

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

    async def _call(
        self,
        step: StepPlan,
        inputs: dict[str, Any],
        request: InferRequest,
        each: Emit | None = None,
        *,
        fan_out: bool = False,
    ) -> Outputs:
        """One call of the step's member with ``inputs``, timed into the step's statistics,
        under the step's ``max_inflight_requests`` slot. With ``each`` the call streams
        (``infer_stream``): every response goes to ``each`` and no outputs are returned.
        ``fan_out``: one of a map's items, submitted together (see InferRequest.fan_out).

        Raises:
            DagserveError: the member's, attributed to the pipeline and step. Anything else
                (e.g. raised by ``each``) passes through as is, uncounted.
        """
        sub = step.member_request(inputs, request, fan_out=fan_out)
        model, version = step.model, step.version
        stats = self._step_stats[step.index]
        start = time.perf_counter_ns()
        response: InferResponse | None
        try:
            # The call is made where it is awaited: a cancelled wait for a slot leaves none behind.
            if self._limiters is None:
                queued = start
                response = await (
                    self._infer(model, version, sub) if each is None
                    else self._infer_stream(model, version, sub, each)
                )
            else:
                async with self._limiters[step.index]:
                    queued = time.perf_counter_ns()
                    response = await (
                        self._infer(model, version, sub) if each is None
                        else self._infer_stream(model, version, sub, each)
                    )
        except DagserveError as exc:
            stats.fail.add(time.perf_counter_ns() - start)
            raise self.attributed(exc, step) from exc
        end = time.perf_counter_ns()
        stats.success.add(end - start)
        stats.queue.add(queued - start)
        stats.compute.add(end - queued)
        latency = self._stats.latency
        if latency is not None:
            latency.step(step.name, step.model, end - start)
        return {} if response is None else response.outputs

    async def _map(
        self, step: StepPlan, inputs: dict[str, Any], request: InferRequest
    ) -> dict[str, np.ndarray]:
        """Call the model once per element of the mapped inputs, all at once (so the calls
        batch at the model), and gather the results as the step says (:func:`.gather.gather`);
        no elements: empty outputs, no call."""
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
            async with FirstFailure() as group:

                async def one(i: int) -> None:
                    results[i] = await self._call(step, element(i), request, fan_out=True)

                for i in range(count):
                    group.start_soon(one, i)
        where = f"pipeline '{self.plan.name}', step '{step.name}' (model '{step.model}')"
        return gather(where, step.gather, [name for name, _ in step.outputs], results, batched=keep)

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
                if self._holds(step, until, actual):
                    break
            inputs = dict(inputs)
            for fed, produced in loop.carry:
                inputs[fed] = outputs[produced]
        return outputs

    def _holds(self, step: StepPlan, condition: Condition, actual: Any) -> bool:
        """:func:`holds`, a parameter of the wrong type being the request's error.

        Raises:
            InvalidInputError: naming the pipeline, the step, the parameter and both types.
        """
        try:
            return holds(condition, actual)
        except ConditionTypeError as exc:
            raise InvalidInputError(f"pipeline '{self.plan.name}', step '{step.name}': {exc}") from None

    def attributed(self, exc: DagserveError, step: StepPlan) -> DagserveError:
        """``exc`` as the error of ``step``: its class, the pipeline, step and model prefixed."""
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


def collect(wires: tuple[Wire, ...], values: list[Any]) -> dict[str, Any]:
    """The outputs of ``wires`` that exist."""
    result = {}
    for wire in wires:
        value = read_wire(wire, values)
        if value is not None:
            result[wire.name] = value
    return result

