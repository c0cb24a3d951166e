"""The Python backend: models written as Python code, run in the server's own process.

Two forms are accepted in ``<model>/<version>/model.py`` (or ``default_model_filename``):

* **Triton form** — a ``TritonPythonModel`` class with ``initialize(args)``,
  ``execute(requests)`` (sync or ``async def``) and ``finalize()``, using
  ``triton_python_backend_utils``. It answers exactly as on Triton, BLS included.
* **Native form** — a ``Model`` class with ``infer(inputs) -> outputs`` (sync or async) over
  dicts of numpy arrays, or a module-level ``infer`` function. ``Model(context)`` gets the
  :class:`~dagserve.backends.base.ModelContext` when its ``__init__`` takes an argument. For
  a batching model (``max_batch_size > 0``) the requests of a batch are concatenated along the
  first dimension, so ``infer`` sees one batch and its outputs are split back per request.

Where sync code runs is the config parameter ``execution``:

* ``thread`` (default; ``auto`` is the same): on a worker thread of the instance's own, so code
  that blocks (I/O, sleeps, long C calls, blocking BLS) holds only that instance — the event
  loop keeps serving health, metrics and every other model. The hand-off costs a few tens of
  microseconds per call (docs/performance.md).
* ``inline``: on the event loop, saving that hand-off, for code its author knows is short and
  never blocks: while it runs nothing else does. It is never moved off the loop; a call that
  holds the loop over 10 ms is logged. Code that calls the blocking BLS ``.exec(`` cannot run
  inline (it would wait on the loop it holds) and is refused at load.
* ``process``: in a worker process of its own, for GIL-bound code (see :mod:`.process`).

``async def`` code always runs on the loop: it is non-blocking by contract, as on Triton.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import errors
from ..repository.config import InstanceGroup, InstanceKind, ModelConfig
from ..repository.loader import validate
from ..types import InferRequest
from . import pb_utils
from ._imports import import_file, user_code_lock
from .base import ExecuteMode, ModelContext, ModelFiles, Outputs, concat_requests, split_outputs
from .process import ProcessModel

__all__ = ["FILES", "complete_config", "load"]

FILES = ModelFiles(names=("model.py",))

DECOUPLED_ASYNC_CONCURRENCY = 1024
"""How many requests one instance of a decoupled Triton model with ``async def execute`` runs at
once (Triton sets no limit: its coroutines share the instance's event loop); the bound only keeps
the instance pool finite."""

log = logging.getLogger("dagserve.backends.python")


def load(context: ModelContext) -> TritonModel | NativeModel | ProcessModel:
    """Import the model's Python file and create one instance of it.

    Raises:
        ConfigError: no model file, or it defines neither form.
    """
    filename = FILES.candidates(context.config)[0]
    path = context.version_dir / filename
    if not path.is_file():
        raise errors.ConfigError(f"{path}: model file not found (python backend expects {filename})")
    if not context.config.input:
        # Legal (Triton loads and calls such a model too), but usually a forgotten 'inputs:'.
        log.warning(
            "model '%s' declares no inputs, so it can only be called with none; if %s reads inputs, "
            "declare them in its config, e.g. inputs: [{name: X, datatype: FP32, shape: [-1]}]",
            context.name, filename,
        )
    if context.config.parameters.get("execution") == "process":
        return ProcessModel(context, load)
    instance: TritonModel | NativeModel
    with _IMPORT_LOCK:  # the import and the construction (lazy imports in initialize), see _imports
        module = _import(path, f"model_{context.name}_{context.version}")
        mode = _mode(context)
        if hasattr(module, "TritonPythonModel"):
            instance = TritonModel(module.TritonPythonModel, context, mode)
        elif hasattr(module, "Model") or hasattr(module, "infer"):
            instance = NativeModel(module, context, mode)
        else:
            raise errors.ConfigError(
                f"{path}: defines neither a TritonPythonModel class, a Model class nor an infer function"
            )
    if instance.mode == "inline" and _calls_blocking_bls(path):
        if "execution" not in context.config.parameters:  # the server's default, not the model's choice
            log.info("model '%s': calls the blocking BLS '.exec(': runs in a worker thread despite "
                     "--python-execution inline", context.name)
            instance.mode = "thread"
            return instance
        raise errors.ConfigError(
            f"model '{context.name}': execution: inline cannot run code that calls the blocking BLS "
            "'.exec(' (it would wait on the event loop it holds); use the default execution (thread) "
            "or 'async_exec'"
        )
    return instance


def complete_config(config: ModelConfig, version_dir: Path) -> ModelConfig:
    """Triton's auto-complete for Python models: the model's
    ``TritonPythonModel.auto_complete_config(config)`` staticmethod, when it has one, gets the
    config as a ``pb_utils.ModelConfig`` and returns it completed (inputs, outputs,
    ``max_batch_size``, dynamic batching, transaction policy), as Triton calls it at load.
    Then, with or without a hook, the defaults Triton fills after it (:func:`fill_defaults`):
    ``preferred_batch_size`` and the instance group's ``kind``.

    Blocking (imports the model).

    Raises:
        ConfigError: the hook raised, returned something else, or made an invalid config; the
            model then fails to load with that reason, as on Triton.
    """
    path = version_dir / FILES.candidates(config)[0]
    if not path.is_file() or "auto_complete_config" not in path.read_text():
        return fill_defaults(config)  # not importing a model that has no hook saves a second import
    module = _import(path, f"autocomplete_{config.name}")
    hook = getattr(getattr(module, "TritonPythonModel", None), "auto_complete_config", None)
    if hook is None:
        return fill_defaults(config)
    data = config.to_triton_json() | {"name": config.name}
    if "model_transaction_policy" not in config.model_fields_set:
        data.pop("model_transaction_policy", None)  # unset, so the hook may set it (a default is not a choice)
    data.setdefault("input", [])
    data.setdefault("output", [])
    owner = f"model '{config.name}'"
    try:
        result = hook(pb_utils.ModelConfig(data))
    except Exception as exc:  # model code may raise anything
        log.error("%s: auto_complete_config raised", owner, exc_info=exc)
        raise errors.ConfigError(f"{owner}: auto_complete_config raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, pb_utils.ModelConfig):
        raise errors.ConfigError(
            f"{owner}: auto_complete_config must return the pb_utils.ModelConfig it was given, "
            f"not {type(result).__name__}"
        )
    completed = validate(result.as_dict(), path=path, strict=False)
    return fill_defaults(completed.model_copy(update={"name": config.name, "version_policy": config.version_policy}))


def fill_defaults(config: ModelConfig) -> ModelConfig:
    """What Triton's core fills into a Python model's config after its auto-complete
    (``NormalizeModelConfig`` and ``NormalizeInstanceGroup``, with the Python backend's preferred
    instance group):

    * ``dynamic_batching`` (or ``sequence_batching.oldest``) without ``preferred_batch_size``,
      in a model with ``max_batch_size`` > 0: ``preferred_batch_size: [max_batch_size]``.
    * no ``instance_group``: one group named after the model, ``count: 1``; a group of
      ``KIND_AUTO``: its kind resolved; a group without a name: ``<model>_<index>``. Triton resolves to ``KIND_GPU`` when its GPU build sees a
      GPU; dagserve runs Python instances on the CPU (``model_instance_kind`` is ``"CPU"``), so
      the kind filled is ``KIND_CPU``, the one the model runs with.

    Pure: returns ``config`` itself when there is nothing to fill.
    """
    update: dict[str, Any] = {}
    batching = config.dynamic_batching
    if batching is not None and not batching.preferred_batch_size and config.max_batch_size > 0:
        update["dynamic_batching"] = batching.model_copy(update={"preferred_batch_size": (config.max_batch_size,)})
    sequence = config.sequence_batching
    oldest = sequence.oldest if sequence is not None else None
    if sequence is not None and oldest is not None and not oldest.preferred_batch_size and config.max_batch_size > 0:
        update["sequence_batching"] = sequence.model_copy(
            update={"oldest": oldest.model_copy(update={"preferred_batch_size": (config.max_batch_size,)})}
        )
    if not config.instance_group:
        update["instance_group"] = (InstanceGroup(name=config.name, count=1, kind=InstanceKind.KIND_CPU),)
    elif any(g.kind is InstanceKind.KIND_AUTO or not g.name for g in config.instance_group):
        update["instance_group"] = tuple(
            g.model_copy(update={
                "name": g.name or f"{config.name}_{i}",
                "kind": InstanceKind.KIND_CPU if g.kind is InstanceKind.KIND_AUTO else g.kind,
            })
            for i, g in enumerate(config.instance_group)
        )
    return config.model_copy(update=update) if update else config


def _import(path: Path, label: str) -> ModuleType:
    # Unmodified Triton models import this name; it must resolve before their code runs.
    sys.modules.setdefault("triton_python_backend_utils", pb_utils)
    return import_file(path, label)


def _mode(context: ModelContext) -> ExecuteMode:
    """The execute mode of sync code from the ``execution`` parameter (``process`` is handled
    before the module is imported)."""
    execution = context.config.parameters.get("execution") or context.extras.get("python_execution", "thread")
    if execution in ("thread", "auto"):
        return "thread"
    if execution == "inline":
        return "inline"
    raise errors.ConfigError(
        f"model '{context.name}': parameter execution must be 'thread' (the default), 'inline' or "
        f"'process', not {execution!r}"
    )


_IMPORT_LOCK = user_code_lock
_AST_LOCK = threading.Lock()
"""Models load in parallel worker threads, and CPython 3.11/3.12's ``ast.parse`` is not safe
to call from several threads at once ("AST constructor recursion depth mismatch")."""


def _calls_blocking_bls(path: Path) -> bool:
    """Whether the model's source calls ``something.exec(...)`` (sync BLS blocks its thread
    until the called model answers, so it cannot run on the event loop)."""
    source = path.read_text()
    with _AST_LOCK:
        tree = ast.parse(source, str(path))
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exec"
        for node in ast.walk(tree)
    )


def _sequence_inputs(config: ModelConfig) -> list[str]:
    """Inputs a sequence batcher adds to each request (controls and implicit states)."""
    seq = config.sequence_batching
    if seq is None:
        return []
    return [c.name for c in seq.control_input] + [s.input_name for s in seq.state]


def _failure(context: ModelContext, exc: BaseException) -> errors.ModelExecutionError:
    """The error a request gets when model code raised ``exc``: Triton's message, naming the
    model instance and carrying the exception's type and text, which clients match on. The
    traceback goes to the log under an error id, which the message quotes in the place where
    Triton's shows the stack (its "At:" lines), so no server file paths reach the client."""
    error_id = uuid.uuid4().hex[:12]
    log.error(
        "model '%s' version %s instance %s raised (error id %s)",
        context.name, context.version, context.instance_name, error_id, exc_info=exc,
    )
    return errors.ModelExecutionError(
        f"Failed to process the request(s) for model '{context.instance_name}', "
        f"message: {type(exc).__name__}: {exc}\n\nerror id {error_id}: traceback in the server log"
    )


class TritonModel:
    """A ``TritonPythonModel`` instance."""

    chain = True  # Python that holds the GIL: may run on a pipeline's chain thread (backends.base)

    def __init__(self, cls: type, context: ModelContext, mode: ExecuteMode) -> None:
        self._context = context
        self._model = cls()
        self._execute = self._model.execute
        self._decoupled = context.config.model_transaction_policy.decoupled
        self.mode: ExecuteMode = "async" if inspect.iscoroutinefunction(self._execute) else mode
        if self.mode == "async" and self._decoupled and context.config.sequence_batching is None:
            # Triton (since 24.04) runs a decoupled model's execute coroutine in the background:
            # the instance takes its next request while one waits (a BLS call, I/O), with no limit
            # set by the server. The pool hands this instance out that many times at once.
            self.concurrency = DECOUPLED_ASYNC_CONCURRENCY
        self.compute_split: tuple[int, int] | None = None
        """(input, output) ns of the last execute: wrapping the requests for the model, and
        turning its responses into outputs (Triton's compute_input / compute_output)."""
        config_json = json.dumps(context.config.to_triton_json() | {"name": context.name})
        self._config_json = config_json
        if hasattr(self._model, "initialize"):
            args = {
                "model_config": config_json,
                "model_instance_kind": "CPU" if context.instance_kind == "AUTO" else context.instance_kind,
                "model_instance_name": context.instance_name,
                "model_instance_device_id": str(context.device_id),
                "model_repository": str(context.model_dir),
                "model_version": str(context.version),
                "model_name": context.name,
            }
            token = pb_utils.current_context.set(context)
            try:
                result = self._model.initialize(args)
                if inspect.isawaitable(result):
                    raise errors.ConfigError(
                        f"model '{context.name}': initialize() must not be async in dagserve yet"
                    )
            finally:
                pb_utils.current_context.reset(token)

    def execute(self, requests: Sequence[InferRequest]) -> Any:
        if self.mode == "async":
            return self._execute_async(requests)
        token = pb_utils.current_context.set(self._context)
        try:
            start = time.perf_counter_ns()
            wrapped = [pb_utils.InferenceRequest._received(r) for r in requests]
            input_ns = time.perf_counter_ns() - start
            self.compute_split = (input_ns, 0)
            try:
                responses = self._execute(wrapped)
            except Exception as exc:  # noqa: BLE001 - model code may raise anything
                return self._all_failed(requests, exc)
            start = time.perf_counter_ns()
            results = self._convert(requests, responses)
            self.compute_split = (input_ns, time.perf_counter_ns() - start)
            return results
        finally:
            pb_utils.current_context.reset(token)

    async def _execute_async(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        token = pb_utils.current_context.set(self._context)
        try:
            start = time.perf_counter_ns()
            wrapped = [pb_utils.InferenceRequest._received(r) for r in requests]
            input_ns = time.perf_counter_ns() - start
            self.compute_split = (input_ns, 0)
            try:
                responses = await self._execute(wrapped)
            except Exception as exc:  # noqa: BLE001
                return self._all_failed(requests, exc)
            start = time.perf_counter_ns()
            results = self._convert(requests, responses)
            self.compute_split = (input_ns, time.perf_counter_ns() - start)
            return results
        finally:
            pb_utils.current_context.reset(token)

    def _all_failed(self, requests: Sequence[InferRequest], exc: Exception) -> list[Outputs | BaseException]:
        error: BaseException = exc if isinstance(exc, errors.DagserveError) else _failure(self._context, exc)
        return [error] * len(requests)

    def _convert(self, requests: Sequence[InferRequest], responses: Any) -> list[Outputs | BaseException]:
        name = self._context.name
        if self._decoupled:
            # Responses went through each request's sender; execute returns None (Triton's rule).
            return [{} for _ in requests]
        if not isinstance(responses, (list, tuple)) or len(responses) != len(requests):
            got = len(responses) if isinstance(responses, (list, tuple)) else type(responses).__name__
            error = errors.ModelExecutionError(
                f"model '{name}' returned {got} responses for {len(requests)} requests"
            )
            return [error] * len(requests)
        results: list[Outputs | BaseException] = []
        for response in responses:
            if not isinstance(response, pb_utils.InferenceResponse):
                results.append(errors.ModelExecutionError(
                    f"model '{name}' returned a {type(response).__name__}, not an InferenceResponse"
                ))
            elif response.has_error():
                results.append(pb_utils.to_dagserve_error(response.error()))  # type: ignore[arg-type]
            else:
                results.append({t.name(): t.as_numpy() for t in response.output_tensors()})
        return results

    def close(self) -> None:
        try:
            if hasattr(self._model, "finalize"):
                self._model.finalize()
        finally:
            _release_metrics(self._context)


class NativeModel:
    """A native ``Model`` class or ``infer`` function over dicts of numpy arrays."""

    chain = True  # as TritonModel.chain

    def __init__(self, module: ModuleType, context: ModelContext, mode: ExecuteMode) -> None:
        self._context = context
        self._input_names = [t.name for t in context.config.input] + _sequence_inputs(context.config)
        self._batching = context.config.batching
        self._instance: Any = None
        if hasattr(module, "Model"):
            cls = module.Model
            takes_context = len(inspect.signature(cls).parameters) > 0
            token = pb_utils.current_context.set(context)
            try:
                self._instance = cls(context) if takes_context else cls()
            finally:
                pb_utils.current_context.reset(token)
            self._infer: Callable[..., Any] = self._instance.infer
        else:
            self._infer = module.infer
        self._decoupled = context.config.model_transaction_policy.decoupled
        is_async = inspect.iscoroutinefunction(self._infer) or inspect.isasyncgenfunction(self._infer)
        self.compute_split: tuple[int, int] | None = None  # as TritonModel.compute_split
        self.mode: ExecuteMode = "async" if is_async else mode
        if self._decoupled and not (inspect.isasyncgenfunction(self._infer) or inspect.isgeneratorfunction(self._infer)):
            raise errors.ConfigError(
                f"model '{context.name}' is decoupled: its infer must be a generator that yields each response"
            )

    def _calls(self, requests: Sequence[InferRequest]) -> list[tuple[dict[str, np.ndarray], list[int]]]:
        if self._batching and not self._decoupled:
            return [concat_requests(requests, self._input_names)]
        return [(dict(r.inputs), [1]) for r in requests]

    def execute(self, requests: Sequence[InferRequest]) -> Any:
        if self._decoupled:
            return self._stream_async(requests) if self.mode == "async" else self._stream(requests)
        if self.mode == "async":
            return self._execute_async(requests)
        results: list[Outputs | BaseException] = []
        start = time.perf_counter_ns()
        calls = self._calls(requests)
        input_ns, output_ns = time.perf_counter_ns() - start, 0
        for inputs, sizes in calls:
            try:
                outputs = self._infer(inputs)
            except errors.DagserveError as exc:
                results.extend([exc] * len(sizes))
            except Exception as exc:  # noqa: BLE001
                results.extend([_failure(self._context, exc)] * len(sizes))
            else:
                start = time.perf_counter_ns()
                results.extend(self._split(outputs, sizes))
                output_ns += time.perf_counter_ns() - start
        self.compute_split = (input_ns, output_ns)
        return results

    async def _execute_async(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        results: list[Outputs | BaseException] = []
        start = time.perf_counter_ns()
        calls = self._calls(requests)
        input_ns, output_ns = time.perf_counter_ns() - start, 0
        for inputs, sizes in calls:
            try:
                outputs = await self._infer(inputs)
            except errors.DagserveError as exc:
                results.extend([exc] * len(sizes))
            except Exception as exc:  # noqa: BLE001
                results.extend([_failure(self._context, exc)] * len(sizes))
            else:
                start = time.perf_counter_ns()
                results.extend(self._split(outputs, sizes))
                output_ns += time.perf_counter_ns() - start
        self.compute_split = (input_ns, output_ns)
        return results

    def _stream(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Decoupled, sync generator: each yielded dict is one response."""
        results: list[Outputs | BaseException] = []
        for request in requests:
            sender = request.sender
            assert sender is not None
            try:
                for outputs in self._infer(dict(request.inputs)):
                    if sender.is_cancelled():
                        break
                    sender.send(outputs, final=False)
                sender.send(None, final=True)
                results.append({})
            except Exception as exc:  # noqa: BLE001
                results.append(exc if isinstance(exc, errors.DagserveError) else _failure(self._context, exc))
        return results

    async def _stream_async(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Decoupled, async generator: each yielded dict is one response."""
        results: list[Outputs | BaseException] = []
        for request in requests:
            sender = request.sender
            assert sender is not None
            try:
                async for outputs in self._infer(dict(request.inputs)):
                    if sender.is_cancelled():
                        break
                    sender.send(outputs, final=False)
                sender.send(None, final=True)
                results.append({})
            except Exception as exc:  # noqa: BLE001
                results.append(exc if isinstance(exc, errors.DagserveError) else _failure(self._context, exc))
        return results

    def _split(self, outputs: Any, sizes: list[int]) -> list[Outputs | BaseException]:
        if not isinstance(outputs, dict):
            error = errors.ModelExecutionError(
                f"model '{self._context.name}' returned a {type(outputs).__name__}, not a dict of arrays"
            )
            return [error] * len(sizes)
        if len(sizes) == 1:
            return [outputs]
        return list(split_outputs({k: np.asarray(v) for k, v in outputs.items()}, sizes))

    def close(self) -> None:
        try:
            close = getattr(self._instance, "close", None)
            if close is not None:
                close()
        finally:
            _release_metrics(self._context)


def _release_metrics(context: ModelContext) -> None:
    """The metrics an unloading instance created leave /metrics, as when Triton's stub exits."""
    if context.metrics is not None:
        context.metrics.release_owner(id(context))
