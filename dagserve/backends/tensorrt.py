"""The TensorRT backend (``platform: "tensorrt_plan"`` or ``backend: "tensorrt"``).

The version directory holds ``model.plan`` (or ``default_model_filename``): a serialized
TensorRT engine built for the GPU it runs on. It is deserialized with the ``tensorrt`` Python
API (TensorRT 10's named-tensor interface): inputs and outputs are bound by name, so the
config's tensor names must be the engine's. Engines with dynamic shapes carry optimization
profiles; for each batch the first profile whose min/max shapes admit every input is chosen
(Triton picks it from ``instance_group { profile }``, which dagserve does not read). A
batching model needs an engine whose first dimension is dynamic.

Instances must be ``KIND_GPU`` (TensorRT runs only on a GPU). Device buffers are torch CUDA
tensors, so torch is needed too; each instance computes on its own CUDA stream, host inputs
are staged through pinned memory, and outputs stay on the GPU as torch tensors (a frontend
copies them to host at the edge). ``execute`` blocks in a worker thread.

A version directory with ``model.plan`` and no config is completed from the engine
(:func:`complete_config`: inputs, outputs, ``max_batch_size`` from the profiles), as Triton does.

Status: written against TensorRT 10's documented API but **not run**: TensorRT could not be
installed where dagserve was developed and tested. The missing-package error is tested, and
auto-complete against a stand-in ``tensorrt`` module (tests/backends/test_tensorrt.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DagserveError, InvalidInputError, ModelExecutionError
from ..repository.config import DynamicBatching, ModelConfig, TensorConfig
from ..types import DataType, InferRequest
from ._framework import execution_error, require
from .base import ExecuteMode, ModelContext, ModelFiles, Outputs, run_batch

__all__ = ["FILES", "TensorRTModel", "complete_config", "load", "pick_profile"]

FILES = ModelFiles(names=("model.plan",), frameworks=("tensorrt",), extra="tensorrt")

Shape = tuple[int, ...]
Profile = Mapping[str, tuple[Shape, Shape]]
"""One optimization profile: each input's (min shape, max shape)."""


def pick_profile(shapes: Mapping[str, Shape], profiles: Sequence[Profile]) -> int:
    """The index of the first profile whose [min, max] range admits every input shape.

    Raises:
        InvalidInputError: no profile admits the shapes (the message shows the ranges).
    """
    for index, profile in enumerate(profiles):
        if all(_within(shapes[name], *profile[name]) for name in shapes if name in profile):
            return index
    ranges = "; ".join(
        f"profile {i}: " + ", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, hi) in p.items())
        for i, p in enumerate(profiles)
    )
    got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    raise InvalidInputError(f"input shapes {got} fit no optimization profile of the engine ({ranges})")


def _within(shape: Shape, low: Shape, high: Shape) -> bool:
    return len(shape) == len(low) == len(high) and all(lo <= s <= hi for s, lo, hi in zip(shape, low, high))


# -- auto-complete ----------------------------------------------------------------------------
def complete_config(config: ModelConfig, version_dir: Path) -> ModelConfig:
    """``config`` with inputs, outputs and ``max_batch_size`` read from the engine in
    ``version_dir`` when it declares no inputs or no outputs (Triton's auto-complete of a
    ``model.plan`` without a config); otherwise ``config`` unchanged. Blocking: it deserializes
    the engine (which TensorRT does on a GPU).

    An engine whose every input and output has a dynamic first dimension batches: its
    ``max_batch_size`` is the largest batch its optimization profiles admit for every input
    (when the config sets none), with dynamic batching on, as Triton completes it.

    Raises:
        ConfigError: tensorrt missing, no plan file, an engine TensorRT cannot deserialize, a
            tensor type dagserve has no datatype for, or a ``max_batch_size`` the engine
            cannot honour.
    """
    if config.input and config.output:
        return config
    owner = f"model '{config.name}'"
    trt = require("tensorrt", extra=FILES.extra, owner=owner)
    path = version_dir / FILES.candidates(config)[0]
    if not path.is_file():
        raise ConfigError(f"{owner}: model file {path} not found")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ConfigError(f"{owner}: TensorRT cannot deserialize {path} (built for another TensorRT or GPU?)")
    tensors: dict[str, list[tuple[str, DataType, Shape]]] = {"input": [], "output": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        tensors[kind].append((name, _datatype(trt, engine.get_tensor_dtype(name), name, owner),
                              tuple(int(d) for d in engine.get_tensor_shape(name))))
    every = tensors["input"] + tensors["output"]
    can_batch = bool(every) and all(shape and shape[0] == -1 for _, _, shape in every)
    update: dict[str, Any] = {}
    max_batch = config.max_batch_size
    if can_batch:
        if max_batch == 0:
            max_batch = update["max_batch_size"] = _profile_max_batch(engine, [n for n, _, _ in tensors["input"]])
        if max_batch > 1 and config.dynamic_batching is None and config.sequence_batching is None:
            update["dynamic_batching"] = DynamicBatching()
    elif max_batch != 0:
        raise ConfigError(
            f"{owner}: auto-complete failed: the engine cannot batch (not every input and output has a dynamic "
            f"first dimension), but max_batch_size is {max_batch}"
        )
    for kind in ("input", "output"):
        if not getattr(config, kind):
            update[kind] = tuple(
                TensorConfig(name=name, data_type=datatype, dims=shape[1:] if max_batch > 0 else shape)
                for name, datatype, shape in tensors[kind]
            )
    return config.model_copy(update=update)


def _datatype(trt: Any, trt_dtype: Any, name: str, owner: str) -> DataType:
    if str(trt_dtype).rsplit(".", 1)[-1] == "BF16":  # numpy has no bfloat16
        return DataType.BF16
    try:
        return DataType.from_numpy(np.dtype(trt.nptype(trt_dtype)))
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"{owner}: auto-complete failed: tensor '{name}' has type {trt_dtype}") from None


def _profile_max_batch(engine: Any, inputs: Sequence[str]) -> int:
    """The largest first dimension every input admits in some optimization profile (at least 1)."""
    best = 1
    for profile in range(engine.num_optimization_profiles):
        admitted = [int(engine.get_tensor_profile_shape(name, profile)[2][0]) for name in inputs]
        if admitted:
            best = max(best, min(admitted))
    return best


def load(context: ModelContext) -> TensorRTModel:
    """Deserialize the engine for one GPU instance.

    Raises:
        ConfigError: tensorrt or torch missing (install ``dagserve[tensorrt]``), a non-GPU
            instance, no plan file, an engine TensorRT cannot load, or config tensors that are
            not the engine's (by name, datatype or rank).
    """
    config = context.config
    owner = f"model '{context.name}' version {context.version}"
    trt = require("tensorrt", extra=FILES.extra, owner=owner)
    torch = require("torch", extra=FILES.extra, owner=owner, purpose="TensorRT's device buffers")
    if context.instance_kind not in ("GPU", "AUTO"):
        raise ConfigError(f"{owner}: TensorRT plans run on a GPU; use instance_group kind KIND_GPU or KIND_AUTO")
    if not torch.cuda.is_available():
        raise ConfigError(f"{owner}: TensorRT needs a CUDA device, and torch finds none")
    path = context.version_dir / FILES.candidates(config)[0]
    if not path.is_file():
        raise ConfigError(f"{owner}: model file {path} not found")
    device = torch.device("cuda", context.device_id)
    with torch.cuda.device(device):
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ConfigError(f"{owner}: TensorRT cannot deserialize {path} (built for another TensorRT or GPU?)")
        execution = engine.create_execution_context()
    return TensorRTModel(trt, torch, engine, execution, device, context, owner, path)


class TensorRTModel:
    """One engine and execution context on one GPU."""

    mode: ExecuteMode = "thread"

    def __init__(
        self, trt: Any, torch: Any, engine: Any, execution: Any, device: Any, context: ModelContext,
        owner: str, path: Path,
    ) -> None:
        self._trt = trt
        self._torch = torch
        self._engine = engine
        self._context = execution
        self._device = device
        self._owner = owner
        config = context.config
        self._batching = config.batching
        self._inputs = [t.name for t in config.input]
        self._outputs = [t.name for t in config.output]
        engine_inputs: dict[str, tuple[Shape, Any]] = {}
        engine_outputs: dict[str, tuple[Shape, Any]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            target = engine_inputs if mode == trt.TensorIOMode.INPUT else engine_outputs
            target[name] = (tuple(engine.get_tensor_shape(name)), engine.get_tensor_dtype(name))
        self._dtypes: dict[str, Any] = {}
        for kind, declared, found in (("input", config.input, engine_inputs), ("output", config.output, engine_outputs)):
            for tensor in declared:
                if tensor.name not in found:
                    raise ConfigError(
                        f"{owner}: {kind} '{tensor.name}' is not an {kind} of the engine in {path} "
                        f"(its {kind}s: {', '.join(found)})"
                    )
                shape, trt_dtype = found[tensor.name]
                torch_dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(trt_dtype))).dtype
                if DataType.from_torch(torch_dtype) is not tensor.data_type and tensor.data_type is not DataType.BF16:
                    raise ConfigError(
                        f"{owner}: {kind} '{tensor.name}' is {tensor.data_type.config_name} in the config but "
                        f"{trt_dtype} in the engine"
                    )
                model_dims = tensor.reshape.shape if tensor.reshape is not None else tensor.dims  # the engine's view
                rank = len(model_dims) + (1 if self._batching else 0)
                if len(shape) != rank:
                    raise ConfigError(
                        f"{owner}: {kind} '{tensor.name}' has rank {rank} in the config but {len(shape)} in the engine"
                    )
                if self._batching and kind == "input" and shape[0] != -1:
                    raise ConfigError(
                        f"{owner}: max_batch_size is {config.max_batch_size}, but the engine's input "
                        f"'{tensor.name}' has a fixed first dimension {shape[0]}"
                    )
                self._dtypes[tensor.name] = tensor.data_type.torch_dtype
        missing = [n for n in engine_inputs if n not in self._inputs]
        if missing:
            raise ConfigError(f"{owner}: the engine needs input(s) {', '.join(missing)}, which the config does not declare")
        self._profiles: list[Profile] = [
            {n: (tuple(engine.get_tensor_profile_shape(n, p)[0]), tuple(engine.get_tensor_profile_shape(n, p)[2]))
             for n in engine_inputs if -1 in engine_inputs[n][0]}
            for p in range(engine.num_optimization_profiles)
        ]
        self._profile = 0
        self._stream = torch.cuda.Stream(device)

    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Run a batch: one engine execution over the concatenated requests when batching."""
        return run_batch(requests, self._run, batching=self._batching)

    def _run(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        torch = self._torch
        try:
            with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
                tensors, sizes = self._gather(requests)
                shapes = {n: tuple(t.shape) for n, t in tensors.items()}
                if self._profiles:
                    profile = pick_profile(shapes, self._profiles)
                    if profile != self._profile:
                        self._context.set_optimization_profile_async(profile, self._stream.cuda_stream)
                        self._profile = profile
                for name, tensor in tensors.items():
                    self._context.set_input_shape(name, shapes[name])
                    self._context.set_tensor_address(name, tensor.data_ptr())
                outputs = {}
                for name in self._outputs:
                    shape = tuple(self._context.get_tensor_shape(name))
                    if any(d < 0 for d in shape):
                        raise ModelExecutionError(f"{self._owner}: TensorRT cannot infer the shape of output '{name}'")
                    outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                    self._context.set_tensor_address(name, outputs[name].data_ptr())
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise ModelExecutionError(f"{self._owner}: TensorRT failed to execute the batch")
            self._stream.synchronize()
        except DagserveError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # noqa: BLE001
            return [execution_error(self._owner, "TensorRT", exc)] * len(requests)
        if len(sizes) == 1:
            return [outputs]
        per_request: list[dict[str, Any]] = [{} for _ in sizes]
        for name, tensor in outputs.items():
            for i, part in enumerate(torch.split(tensor, sizes, dim=0)):
                per_request[i][name] = part
        return list(per_request)

    def _gather(self, requests: Sequence[InferRequest]) -> tuple[dict[str, Any], list[int]]:
        torch = self._torch
        sizes = [int(r.inputs[self._inputs[0]].shape[0]) for r in requests] if self._batching else [1]
        tensors = {}
        for name in self._inputs:
            parts = []
            for request in requests:
                array = request.inputs[name]
                if isinstance(array, np.ndarray):
                    # Stage through pinned memory (one DMA); BF16 arrives as uint16 bit patterns.
                    host_dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
                    staged = torch.empty(array.shape, dtype=host_dtype, pin_memory=True)
                    staged.numpy()[...] = array
                    array = staged.view(torch.bfloat16) if self._dtypes[name] == torch.bfloat16 else staged
                elif not isinstance(array, torch.Tensor):
                    array = torch.from_dlpack(array)
                parts.append(array.to(self._device, dtype=self._dtypes[name], non_blocking=True))
            tensors[name] = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)).contiguous()
        return tensors, sizes

    def close(self) -> None:
        self._context = None
        self._engine = None
