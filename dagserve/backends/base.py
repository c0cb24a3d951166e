"""The backend protocol: how the engine loads, runs and closes one instance of a model.

Lifecycle of an instance: the engine calls the backend's ``load(context)`` once per instance
(in a worker thread, since loading is blocking), then ``execute`` any number of times — never
concurrently on the same instance unless it sets ``concurrency`` (below) — then ``close()`` once. ``execute`` receives a batch: the
list of requests the scheduler grouped, each still with its own batch dimension, and returns one
result per request, in order: a mapping of output tensors, or an exception for that request
alone (other requests of the batch still succeed).

``mode`` tells the engine how to call ``execute``:

* ``"thread"``: a blocking call, run on a worker thread of the instance's own (one call at a
  time; a call that blocks holds only that instance);
* ``"inline"``: a short non-blocking call, run directly on the event loop (no thread hop); the
  engine never changes an instance's mode;
* ``"async"``: ``execute`` is a coroutine function, awaited on the event loop.

An instance may set ``concurrency = k`` (default 1) to take up to ``k`` calls of ``execute``
at once: an ``async`` one is awaited that many times concurrently; a ``thread`` one gets ``k``
worker threads, so its ``execute`` must then be safe to call from several threads (the PyTorch
backend's GPU instances do this to stage one batch while another computes).

An instance may also set ``chain = True``: its ``thread``-mode ``execute`` is Python code that
holds the GIL (the Python backend's in-process models), so a pipeline may run a request's
consecutive steps of such models one after another on one worker thread of its own instead of
each on its instance's thread (``engine/chain.py``): nothing that could overlap is serialised.
Backends whose ``execute`` releases the GIL (torch, ONNX Runtime, a worker process) leave it
unset and keep their own threads.

Backends import no engine code; what they may ask of the server (BLS calls) goes through the
:class:`ModelContext` the engine hands them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..custom_metrics import CustomMetrics
from ..errors import InvalidInputError
from ..repository.config import ModelConfig
from ..types import InferRequest, InferResponse

__all__ = [
    "Backend",
    "ExecuteMode",
    "ModelContext",
    "ModelControl",
    "ModelFiles",
    "ModelInstance",
    "Outputs",
    "concat_requests",
    "instance_contexts",
    "run_batch",
    "split_outputs",
]

Outputs = Mapping[str, np.ndarray]
ExecuteMode = Literal["thread", "inline", "async"]
InferCallback = Callable[[str, str, InferRequest], Awaitable[InferResponse]]
InferStreamCallback = Callable[[str, str, InferRequest, Callable[[InferResponse], Awaitable[None]]], Awaitable[None]]


class ModelControl(Protocol):
    """What a model may ask of the server's model control (``pb_utils.load_model`` and
    friends): the server's own load / unload / readiness calls, awaited on its event loop."""

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None: ...

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    def model_ready(self, name: str, version: str = "") -> bool: ...


@dataclass(frozen=True, kw_only=True)
class ModelContext:
    """What a backend instance knows of its model and may ask of the server.

    ``infer(model, version, request)`` is an async call into the server (used for BLS); it
    must be awaited on the server's event loop; ``infer_stream(model, version, request, emit)``
    awaits ``emit`` for each response (0..N from a decoupled model, the last one final), for BLS
    with ``decoupled=True``. ``run_sync`` runs such a coroutine from a
    worker thread and blocks until it is done. ``control`` is the server's model control
    (``pb_utils.load_model`` / ``unload_model`` / ``is_model_ready``), None where there is none.
    """

    name: str
    version: int
    config: ModelConfig
    model_dir: Path
    version_dir: Path
    repository: Path
    instance_name: str
    instance_kind: str = "CPU"  # CPU, GPU, MODEL, or AUTO: the backend picks a GPU if it can
    device_id: int = 0
    infer: InferCallback | None = None
    infer_stream: InferStreamCallback | None = None
    run_sync: Callable[..., Any] | None = None
    control: ModelControl | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    metrics: CustomMetrics | None = None
    """The server's registry of models' own metric families (``pb_utils.MetricFamily``)."""


def instance_contexts(
    name: str,
    version: int,
    config: ModelConfig,
    model_dir: Path,
    *,
    infer: InferCallback | None = None,
    infer_stream: InferStreamCallback | None = None,
    run_sync: Callable[..., Any] | None = None,
    control: ModelControl | None = None,
    metrics: CustomMetrics | None = None,
    extras: Mapping[str, Any] | None = None,
) -> list[ModelContext]:
    """One context per instance the config's ``instance_group`` asks for, named as Triton
    names instances (``<model>_<group>_<index>``). No group is one instance of ``KIND_AUTO``,
    as on Triton (a GPU where the backend can use one, else the CPU); a group's GPUs are dealt
    out to its instances in turn."""
    contexts = []
    for g, group in enumerate(config.instance_group or (None,)):
        count = group.count if group else 1
        kind = group.kind.value.removeprefix("KIND_") if group else "AUTO"
        gpus = (group.gpus if group else ()) or (0,)
        for i in range(count):
            contexts.append(ModelContext(
                name=name,
                version=version,
                config=config,
                model_dir=model_dir,
                version_dir=model_dir / str(version),
                repository=model_dir.parent,
                instance_name=f"{name}_{g}_{i}",
                instance_kind=kind,
                device_id=gpus[i % len(gpus)],
                infer=infer,
                infer_stream=infer_stream,
                run_sync=run_sync,
                control=control,
                metrics=metrics,
                extras=extras or {},
            ))
    return contexts


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelFiles:
    """What a backend reads from a version directory, declared once as its module's ``FILES``:
    for its own ``load`` and for ``dagserve validate``, which asks the backend rather than
    keeping a table of its own.

    ``names``: the default file names, any one of which serves (the first present wins);
    ``frameworks``: the modules that run such a file (any one suffices), imported only in
    ``load``; ``extra``: dagserve's optional dependency group that installs them.
    """

    names: tuple[str, ...]
    frameworks: tuple[str, ...] = ()
    extra: str = ""

    def candidates(self, config: ModelConfig) -> tuple[str, ...]:
        """The names a version directory may hold the model under: the config's
        ``default_model_filename`` alone when it sets one, else :attr:`names`."""
        return (config.default_model_filename,) if config.default_model_filename else self.names


@runtime_checkable
class ModelInstance(Protocol):
    """One loaded, executable instance of a model version."""

    mode: ExecuteMode

    def execute(self, requests: Sequence[InferRequest]) -> Any:
        """Run a batch; return ``list[Outputs | BaseException]`` (awaitable when mode is async)."""
        ...

    def close(self) -> None:
        """Release the instance's resources. Called once; never concurrently with execute."""
        ...


class Backend(Protocol):
    """A backend module: a ``load`` function creating instances of one kind of model, and
    the model files it reads (``FILES``)."""

    @property
    def FILES(self) -> ModelFiles: ...

    def load(self, context: ModelContext) -> ModelInstance: ...


def concat_requests(requests: Sequence[InferRequest], names: Sequence[str]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate the named inputs of a batch of requests along the batch dimension.

    Returns the merged inputs and each request's batch size, for :func:`split_outputs`.

    Raises:
        InvalidInputError: requests disagree on the non-batch dimensions of an input.
    """
    if len(requests) == 1:
        only = requests[0]
        sizes = [_batch_size(only, names)]
        return {n: only.inputs[n] for n in names if n in only.inputs}, sizes
    sizes = [_batch_size(r, names) for r in requests]
    merged: dict[str, np.ndarray] = {}
    for n in names:
        parts = [r.inputs[n] for r in requests if n in r.inputs]
        if not parts:
            continue
        if len(parts) != len(requests):
            raise InvalidInputError(f"optional input '{n}' is given in only some requests of a batch")
        try:
            merged[n] = np.concatenate(parts, axis=0)
        except ValueError as exc:
            raise InvalidInputError(f"input '{n}': cannot batch tensors of different shapes ({exc})") from None
    return merged, sizes


def split_outputs(outputs: Outputs, sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Split batched outputs back into one mapping per request (views, no copies)."""
    if len(sizes) == 1:
        return [dict(outputs)]
    bounds = np.cumsum(sizes)[:-1]
    per_request: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    for name, tensor in outputs.items():
        for i, part in enumerate(np.split(np.asarray(tensor), bounds, axis=0)):
            per_request[i][name] = part
    return per_request


def run_batch(
    requests: Sequence[InferRequest],
    run: Callable[[Sequence[InferRequest]], list[Outputs | BaseException]],
    *,
    batching: bool,
) -> list[Outputs | BaseException]:
    """``run`` once over the whole batch for a batching model, else once per request (a
    model without a batch dimension cannot take several requests in one call)."""
    if batching:
        return run(requests)
    results: list[Outputs | BaseException] = []
    for request in requests:
        results.extend(run([request]))
    return results


def _batch_size(request: InferRequest, names: Sequence[str]) -> int:
    for n in names:
        if n in request.inputs:
            shape = request.inputs[n].shape
            return shape[0] if shape else 1
    return 1
