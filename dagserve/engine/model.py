"""One served version of a model: its lifecycle, its scheduler, and request validation.

A :class:`ModelVersion` checks every request against the config *before* it is queued (names,
datatypes, shapes, batch size), and every backend answer after it runs (outputs declared,
produced, of the declared type and shape), so a client always learns which tensor is wrong.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

import anyio
import numpy as np
from anyio.abc import TaskStatus

from .. import classification
from ..backends.base import Outputs
from ..errors import (
    DagserveError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotReadyError,
    UnsupportedError,
)
from ..repository.config import DynamicBatching, ModelConfig
from ..repository.locations import did_you_mean
from ..tensor_bytes import holds
from ..tracing.context import CURRENT as _TRACE
from ..types import (
    DataType,
    InferRequest,
    InferResponse,
    TensorSpec,
    bytes_array,
    datatype_of,
    is_device_tensor,
    shape_matches,
    to_host,
)
from .cache import ResponseCache, request_key
from .instances import InstancePool, OffLoop
from .parameters import check_parameters, check_priority
from .peers import Spread
from .queue import RequestQueue
from .scheduler import BatchPolicy, DirectScheduler, DynamicBatcher
from .sequence import SequenceBatcher
from .stats import ModelStatistics
from .stream import ChannelSender

__all__ = ["ModelState", "ModelVersion", "Runner"]

log = logging.getLogger("dagserve.engine")


class ModelState(enum.Enum):
    """Where a model version is in its lifecycle."""

    UNLOADED = "UNLOADED"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"

    @property
    def triton_name(self) -> str:
        """The state as Triton's repository index reports it."""
        return self.value if self in (ModelState.READY, ModelState.LOADING, ModelState.UNLOADING) else "UNAVAILABLE"


class Runner(Protocol):
    """What answers a validated request: a scheduler in front of instances, or a pipeline."""

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs: ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...


class ModelVersion:
    """A model version the server serves, from loading to unloading."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        config: ModelConfig,
        platform: str,
        cache: ResponseCache | None = None,
        labels: Mapping[str, tuple[str, ...]] | None = None,
        forward: Runner | None = None,
    ) -> None:
        """``labels``: class labels of outputs, for the classification extension
        (:mod:`dagserve.classification`), read from the config's ``label_filename``s.
        ``forward``: the runner that hands each request to the worker process serving this
        model (``--workers N``, placement ``one``; :class:`.peers.ForwardRunner`), in place of
        instances and a scheduler here."""
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.decoupled = config.model_transaction_policy.decoupled  # 0..N responses per request
        self.platform = platform
        self.state = ModelState.UNLOADED
        self.reason = ""
        self._health: tuple[Callable[[], str], ...] = ()  # instances that can be unreachable
        self.stats = ModelStatistics(name, self.version_str)
        self._owner = f"model '{name}'"
        self._inputs: dict[str, TensorSpec] = config.input_specs()
        self._outputs: dict[str, TensorSpec] = config.output_specs()
        self._output_names = tuple(self._outputs)
        self._datatypes = {n: spec.datatype for n, spec in self._outputs.items()}
        # What validate() and check_outputs() compare against, computed once (hot path).
        self._input_checks = tuple(
            (n, spec.datatype, spec.full_shape(config.batching), spec.optional) for n, spec in self._inputs.items()
        )
        self._output_checks = {n: (spec.datatype, spec.full_shape(config.batching)) for n, spec in self._outputs.items()}
        self.labels: Mapping[str, tuple[str, ...]] = dict(labels or {})
        self._batching = config.batching
        self._max_batch = config.max_batch_size
        self._runner: Runner | None = None
        self._forward = forward
        self.spread: Spread | None = None
        """Set for a replicated model of a ``--workers N`` server: requests from clients may
        run on a less busy worker (:class:`.peers.Spread`)."""
        self._cache = cache if cache is not None and _cacheable(config) else None
        self.cached = self._cache is not None
        """Responses of this version go through the response cache."""
        self._pool: InstancePool | None = None
        self._priority_levels = 0  # configured in the dynamic batcher; 0: none, any priority is the one level
        self._in_flight = 0
        self._idle = anyio.Event()
        self._unload = anyio.Event()
        self._unload_why = ""
        self._closed = anyio.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    def _transition(self, new: ModelState, *allowed: ModelState, why: str = "") -> None:
        if self.state not in allowed:
            raise RuntimeError(f"{self._owner} version {self.version}: cannot go from {self.state.value} to {new.value}")
        self._set_state(new, why)

    def _set_state(self, new: ModelState, why: str = "") -> None:
        """Enter ``new`` and log it: one line per state change, with why (a failure at ERROR,
        every other change at INFO). The record carries ``model``, ``version``, ``state``,
        ``previous_state`` and ``reason`` for structured (json) logs."""
        old, self.state = self.state, new
        log.log(
            logging.ERROR if new is ModelState.FAILED else logging.INFO,
            "%s version %s: %s -> %s%s", self._owner, self.version, old.value, new.value, f": {why}" if why else "",
            extra={"model": self.name, "version": self.version_str, "state": new.value,
                   "previous_state": old.value, "reason": why},
        )

    async def serve(
        self,
        load: Callable[[], Any],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load, serve until :meth:`unload` is called, then drain and close.

        ``load`` is an async callable returning what :meth:`_make_runner` turns into the
        :class:`Runner`: the backend instances of a model, the ready runner of a pipeline. Signals ``task_status`` once READY or FAILED; a failed load
        is recorded in ``state``/``reason``, never raised.
        """
        self._transition(ModelState.LOADING, ModelState.UNLOADED, ModelState.FAILED, why=f"platform {self.platform}")
        started = time.monotonic()
        try:
            loaded = await load()
            self._runner = self._make_runner(loaded)
        except Exception as exc:
            self.reason = str(exc) if isinstance(exc, DagserveError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, DagserveError):
                log.error("%s version %s failed to load", self._owner, self.version, exc_info=exc)
            self._set_state(ModelState.FAILED, self.reason)
            self._closed.set()
            task_status.started()
            return
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._runner.run)
                for instance in self._pool.instances if self._pool is not None else ():
                    # Backend hook (remote): an instance whose server can be unreachable says
                    # why (the version is then not ready), re-checks it in this task group, and
                    # counts its round trips by endpoint (for the metrics).
                    health, watch = getattr(instance, "not_ready_reason", None), getattr(instance, "watch", None)
                    if health is not None:
                        self._health += (health,)
                    if watch is not None:
                        tg.start_soon(watch)
                    endpoints = getattr(instance, "endpoint_statistics", None)
                    if endpoints is not None:
                        self.stats.endpoints = endpoints
                self.reason = ""
                self.stats.load_seconds = time.monotonic() - started
                self._transition(ModelState.READY, ModelState.LOADING,
                                 why=f"loaded in {self.stats.load_seconds:.2f} s")
                task_status.started()
                await self._unload.wait()
                self._set_state(ModelState.UNLOADING, self._unload_why)
                if self._in_flight:
                    await self._idle.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self._pool is not None:
                    await anyio.to_thread.run_sync(self._pool.close)
            if self.state is not ModelState.UNLOADED:
                self._set_state(ModelState.UNLOADED, self._unload_why or "stopped")
            self.reason = "unloaded"
            self._closed.set()

    def _make_runner(self, loaded: Any) -> Runner:
        """The runner over what ``load`` returned: here the backend's instances, behind the
        scheduler the config asks for (a :class:`~.pipeline.PipelineVersion` is handed its
        runner ready made and overrides this)."""
        if self._forward is not None:
            return self._forward  # the model's instances and scheduler are in another process
        self._pool = InstancePool(loaded, self.stats)
        sequence = self.config.sequence_batching
        if sequence is not None:
            # Requests of different sequences batch like dynamic batching (``direct`` with no
            # delay unless configured, ``oldest`` with its delay and preferred sizes).
            strategy = sequence.oldest or sequence.direct
            batching = DynamicBatching(
                max_queue_delay_microseconds=strategy.max_queue_delay_microseconds if strategy else 0,
                preferred_batch_size=sequence.oldest.preferred_batch_size if sequence.oldest else (),
            )
            return SequenceBatcher(self._batcher(batching), self.config)
        return self._batcher(self.config.dynamic_batching)

    def _batcher(self, batching: DynamicBatching | None) -> Runner:
        assert self._pool is not None
        if batching is None or not self._batching:
            return DirectScheduler(self._pool, self.stats)
        policy = BatchPolicy(
            max_batch_size=self._max_batch,
            preferred_batch_sizes=batching.preferred_batch_size,
            max_queue_delay=batching.max_queue_delay_microseconds / 1e6,
        )
        queue = RequestQueue(batching)
        self._priority_levels = queue.levels
        return DynamicBatcher(self._pool, self.stats, policy, queue, preserve_ordering=batching.preserve_ordering)

    def unload(self, why: str = "") -> None:
        """Ask :meth:`serve` to stop taking requests, finish those in flight, and close;
        ``why`` goes into the log lines of UNLOADING and UNLOADED."""
        if not self._unload.is_set():
            self._unload_why = why
        self._unload.set()

    async def wait_closed(self) -> None:
        """Wait until the version is unloaded (or failed to load)."""
        await self._closed.wait()

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and not (self._health and self._unhealthy())

    @property
    def reason(self) -> str:
        """Why the version is not ready: its load failure, or an instance's (a remote model
        whose server cannot be reached); "" when ready."""
        if self._reason or self.state is not ModelState.READY or not self._health:
            return self._reason
        return self._unhealthy()

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = value

    def _unhealthy(self) -> str:
        for health in self._health:
            why = health()
            if why:
                return why
        return ""

    # -- requests -----------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate ``request``, run it, and check what the model answered.

        Raises:
            ModelNotReadyError: the version is not READY.
            InvalidInputError: the request does not fit the model's inputs or outputs.
            ModelExecutionError: the model failed, or answered with wrong outputs.
        """
        if _TRACE.get() is not None and request.trace is None:  # the request is traced
            return await self._traced(request)
        self._check_ready()
        if self.decoupled:
            raise UnsupportedError(
                f"{self._owner} is decoupled (0..N responses per request): call it through gRPC "
                "ModelStreamInfer or HTTP /generate_stream"
            )
        batch_size = self.validate(request)
        key = None
        if self._cache is not None:
            start = time.perf_counter_ns()
            key = request_key(self.name, self.version_str, request)
            cached = self._cache.get(key)
            self.stats.record_cache(hit=cached is not None, lookup_ns=time.perf_counter_ns() - start)
            if cached is not None:
                return self._response(request, cached)
        runner = self._runner
        assert runner is not None  # _check_ready() saw it
        self._in_flight += 1
        try:
            if self.spread is None or request.trace is not None:
                raw = await runner.submit(request, batch_size)
            else:
                raw = await self.spread.submit(runner, self.name, self.version_str, request, batch_size)
        finally:
            self._in_flight -= 1
            if not self._in_flight and self.state is ModelState.UNLOADING:
                self._idle.set()
        outputs = self.check_outputs(raw, request.output_names())
        if key is not None and self._cache is not None:
            self._cache.put(key, outputs)
        return self._response(request, outputs)

    @property
    def runs_now(self) -> bool:
        """Whether :meth:`infer_now` may run this version's requests on a worker thread: it
        is ready, answers once per request from its own instances (no pipeline, decoupled
        or sequence model), caches nothing, and every instance runs blocking Python code on
        a thread (``execution: thread``; the backend sets ``chain`` on its instances)."""
        return (
            self.state is ModelState.READY
            and self._cache is None
            and not self.decoupled
            and not self._health
            and self._pool is not None
            and self._pool.chains
            and hasattr(self._runner, "submit_now")
        )

    def enter(self) -> None:
        """Count a request in flight (on the event loop) for calls of :meth:`infer_now` made
        for it on a worker thread: the version does not close until :meth:`leave`."""
        self._in_flight += 1

    def leave(self) -> None:
        """The end of what :meth:`enter` began (on the event loop)."""
        self._in_flight -= 1
        if not self._in_flight and self.state is ModelState.UNLOADING:
            self._idle.set()

    def infer_now(self, request: InferRequest, work: OffLoop) -> InferResponse | None:
        """:meth:`infer` on a worker thread between :meth:`enter` and :meth:`leave`, for a
        version that :attr:`runs_now` and a request that is not traced. The request goes
        through the version's scheduler as on the event loop, except that a dynamic batcher
        runs it only as a batch of one taken at once (nothing queued, an instance free): else,
        and when the version is no longer ready (a reload: the event loop looks the model up
        again), this returns ``None``, having done and recorded nothing, for the caller to call
        :meth:`infer` on the event loop. Statistics go to ``work.later``.

        Raises:
            DagserveError: as :meth:`infer`.
            ChainCancelled: ``work`` was cancelled while the request waited or executed.
        """
        if self.state is not ModelState.READY:
            return None
        batch_size = self.validate(request)
        runner = self._runner
        assert runner is not None
        raw = runner.submit_now(request, batch_size, work)  # type: ignore[attr-defined]
        if raw is None:
            return None
        return self._response(request, self.check_outputs(raw, request.output_names()))

    async def _traced(self, request: InferRequest, emit: Callable[[InferResponse], Awaitable[None]] | None = None) -> Any:
        """:meth:`infer` (or :meth:`infer_stream` with ``emit``) in a span of this model under
        the current one; the call tree below (pipeline steps, batch executions) hangs under it."""
        parent = _TRACE.get()
        assert parent is not None
        span = parent.model(self.name, self.version_str, request.id)
        token = _TRACE.set(span)
        pool = self._pool
        if pool is not None:
            pool.traced += 1
        try:
            span.event("QUEUE_START")
            traced = replace(request, trace=span)
            result = await (self.infer(traced) if emit is None else self.infer_stream(traced, emit))
        except BaseException as exc:
            span.end(exc)
            raise
        else:
            span.end()
        finally:
            _TRACE.reset(token)
            if pool is not None:
                pool.traced -= 1
        return result

    def _check_ready(self) -> None:
        if self.state is not ModelState.READY or self._runner is None:
            raise ModelNotReadyError(f"{self._owner} version {self.version} is not ready ({self.state.value.lower()})")
        if self._health:
            why = self._unhealthy()
            if why:
                raise ModelNotReadyError(f"{self._owner} version {self.version} is not ready: {why}")

    def _response(self, request: InferRequest, outputs: Mapping[str, np.ndarray], final: bool = True) -> InferResponse:
        datatypes: Mapping[str, DataType] = self._datatypes
        counts = classification.requested_counts(request) if request.outputs else None
        if counts:
            # Classification replaces the outputs asked for that way (validate() checked them).
            outputs, datatypes = classification.apply(
                counts, outputs, datatypes, batched=self._batching, labels=self.labels
            )
        return InferResponse(
            model_name=self.name,
            model_version=self.version_str,
            outputs=outputs,
            datatypes=datatypes,
            id=request.id,
            final=final,
        )

    async def infer_stream(self, request: InferRequest, emit: Callable[[InferResponse], Awaitable[None]]) -> None:
        """Run ``request`` and ``await emit(response)`` for each response, in order.

        A model that is not decoupled emits exactly one (final) response. A decoupled model
        emits each response it sends; the last has ``final=True`` and may have no outputs.
        Returns after the final response. Cancelling the caller cancels the request; the
        model's later sends are dropped and its sender reports ``is_cancelled()``.

        Raises:
            DagserveError: as :meth:`infer`; a failure after some responses were emitted is
                raised after them.
        """
        if _TRACE.get() is not None and request.trace is None:  # the request is traced
            await self._traced(request, emit)
            return
        if not self.decoupled:
            await emit(await self.infer(request))
            return
        self._check_ready()
        batch_size = self.validate(request)
        sender = ChannelSender()
        wanted = request.output_names()
        start = time.perf_counter_ns()
        first = True
        self._in_flight += 1
        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._submit_decoupled, replace(request, sender=sender), batch_size, sender)
                async with sender.receive:
                    try:
                        async for outputs, final in sender.receive:
                            if isinstance(outputs, BaseException):
                                failure = outputs
                                break
                            checked = self.check_outputs(outputs, wanted) if outputs is not None else {}
                            if first and outputs is not None:  # a bare final flag is no response
                                first = False
                                if self.stats.latency is not None:
                                    self.stats.latency.first_response(time.perf_counter_ns() - start)
                            await emit(self._response(request, checked, final))
                            if final:
                                break
                    except BaseException:
                        # The reader is gone (cancelled, or emit failed): tell the model now, as
                        # the task group waits for a model running in a thread to return.
                        sender.cancel()
                        raise
                # After the final response the model's call is left to return, not cancelled:
                # a model that sends its final flag from ``execute`` returns just after, and
                # cancelling it then counted the request CANCELED although the client had every
                # response (seen under load). A model running in a thread is waited for anyway.
        except BaseExceptionGroup as group:
            # One request, one error: report it as itself, not wrapped in a group.
            raise group.exceptions[0] if len(group.exceptions) == 1 else group from None
        finally:
            sender.cancel()
            self._in_flight -= 1
            if not self._in_flight and self.state is ModelState.UNLOADING:
                self._idle.set()
        if failure is not None:
            raise failure

    async def _submit_decoupled(self, request: InferRequest, batch_size: int, sender: ChannelSender) -> None:
        # The model answers through the sender; execute's own result only reports a failure
        # of the whole call, which ends the stream.
        assert self._runner is not None
        try:
            await self._runner.submit(request, batch_size)
        except Exception as exc:  # noqa: BLE001 - delivered to the reader, in order
            sender.send(exc, final=True)

    def validate(self, request: InferRequest) -> int:
        """Check the request's tensors against the config, its reserved parameters
        (:mod:`.parameters`) and its requested outputs' parameters (only known ones; a usable
        ``classification``: :mod:`dagserve.classification`); return its batch size (1 when
        the model does not batch).

        Raises:
            InvalidInputError: naming the model and the offending tensor or parameter.
        """
        parameters = request.parameters
        if parameters:
            check_parameters(parameters, self._owner)
            if self._priority_levels:
                check_priority(parameters, self._priority_levels, self._owner)
        inputs = request.inputs
        specs = self._inputs
        if len(inputs) > len(specs) or any(name not in specs for name in inputs):
            for name in inputs:
                if name not in specs:
                    raise InvalidInputError(
                        f"{self._owner} has no input '{name}'{did_you_mean(name, specs)} "
                        f"(its inputs: {', '.join(specs) or 'none: its config declares no inputs'})"
                    )
        declared = request.datatypes
        batch = 0
        for name, datatype, expected, optional in self._input_checks:
            array = inputs.get(name)
            if array is None:
                if optional:
                    continue
                raise InvalidInputError(f"{self._owner} expects input '{name}', which the request does not have")
            actual = declared.get(name) if declared else None
            if actual is None:
                actual = request.datatype(name)
            if actual is not datatype:
                raise InvalidInputError(
                    f"{self._owner}: input '{name}' has datatype {actual.value}, expected {datatype.value}"
                )
            shape = array.shape
            if not shape_matches(shape, expected):
                raise InvalidInputError(
                    f"{self._owner}: input '{name}' has shape {list(shape)}, expected {list(expected)}"
                )
            if self._batching:
                size = shape[0]
                if batch and size != batch:
                    raise InvalidInputError(
                        f"{self._owner}: inputs disagree on the batch size ({batch} and {size} for '{name}')"
                    )
                batch = size
        if self._batching and batch > self._max_batch:
            raise InvalidInputError(
                f"{self._owner}: batch size {batch} exceeds the model's max_batch_size {self._max_batch}"
            )
        if request.outputs:
            for requested in request.outputs:
                if requested.name not in self._outputs:
                    raise InvalidInputError(
                        f"{self._owner} has no output '{requested.name}' "
                        f"(its outputs: {', '.join(self._outputs) or 'none'})"
                    )
                if requested.parameters:
                    classification.check_output_parameters(
                        self._owner, requested.name, requested.parameters, self._datatypes[requested.name]
                    )
        return batch or 1


    def check_outputs(self, outputs: Outputs, wanted: tuple[str, ...] | None) -> dict[str, np.ndarray]:
        """The requested outputs, each checked against its declaration.

        Raises:
            ModelExecutionError: an output is undeclared, missing, or of the wrong type or shape.
        """
        checks = self._output_checks
        for name in outputs:
            if name not in checks:
                raise ModelExecutionError(
                    f"{self._owner} returned output '{name}', which its config does not declare"
                    f"{did_you_mean(name, checks)}"
                )
        result: dict[str, np.ndarray] = {}
        for name in wanted or self._output_names:
            array = outputs.get(name)
            if array is None:
                raise ModelExecutionError(f"{self._owner} did not return its output '{name}'")
            datatype, expected = checks[name]
            if type(array) is not np.ndarray or datatype is DataType.BYTES:
                array = _as_array(array, datatype)
            if not holds(array, datatype):
                try:
                    got = datatype_of(array).value
                except ValueError:
                    got = str(array.dtype)
                raise ModelExecutionError(
                    f"{self._owner} returned output '{name}' as {got}, but its config declares {datatype.value}"
                )
            if not shape_matches(array.shape, expected):
                raise ModelExecutionError(
                    f"{self._owner} returned output '{name}' with shape {list(array.shape)}, "
                    f"but its config declares {list(expected)}"
                )
            result[name] = array
        return result

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """KServe v2 model metadata."""
        return {
            "name": self.name,
            "versions": versions,
            "platform": self.platform,
            "inputs": [_tensor_metadata(s, self._batching) for s in self._inputs.values()],
            "outputs": [_tensor_metadata(s, self._batching) for s in self._outputs.values()],
        }


def _cacheable(config: ModelConfig) -> bool:
    """Triton never caches decoupled or stateful (sequence) models."""
    enabled = config.response_cache is not None and config.response_cache.enable
    if enabled and (config.model_transaction_policy.decoupled or config.sequence_batching is not None):
        log.warning("model '%s': response_cache is ignored for decoupled and sequence models", config.name)
        return False
    return enabled


def _tensor_metadata(spec: TensorSpec, batching: bool) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.value, "shape": list(spec.full_shape(batching))}


def _as_array(value: Any, datatype: DataType) -> np.ndarray:
    """An output as the engine passes it on: a numpy array, or a GPU tensor left on its device
    (a torch CUDA tensor or CuPy array, which the next GPU step takes as is and a frontend
    copies to host with ``to_host`` only at the edge). A CPU torch tensor becomes a numpy view.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif is_device_tensor(value):
        return value  # type: ignore[no-any-return]
    else:
        array = to_host(value)
    if datatype is DataType.BYTES and array.dtype.kind in "SU":
        array = bytes_array(array)
    return array

