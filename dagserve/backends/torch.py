"""The PyTorch backend (``platform: "pytorch_libtorch"`` or ``backend: "pytorch"``).

A version directory holds one of (``default_model_filename`` picks one explicitly; otherwise
the first present of ``model.py``, ``model.pt2``, ``model.pt``):

* ``model.pt`` — a TorchScript archive (``torch.jit.save``), as Triton's libtorch backend;
* ``model.pt2`` — a ``torch.export`` program (``torch.export.save``); export it with a dynamic
  batch dimension for a batching model;
* ``model.py`` — Python code defining the ``nn.Module``: a ``create_model()`` factory
  (optionally taking the :class:`~dagserve.backends.base.ModelContext`), or else exactly one
  ``nn.Module`` subclass defined in the file, built with no arguments (Triton's PyTorch 2
  layout). Weights, if any, are a state dict saved beside it under the same stem (``model.pt``
  for ``model.py``), loaded with ``weights_only=True``.

Inputs reach ``forward`` as Triton maps them: names ``<name>__<index>`` pass positionally by
index; names equal to ``forward``'s argument names pass by keyword; a ``forward`` taking one
``Dict[str, Tensor]`` gets all inputs by name; otherwise inputs pass positionally in config
order. ``forward`` returns a tensor, a tuple/list (matched to outputs by ``__<index>`` or in
config order) or a dict of tensors by output name.

The instance group chooses the device (``KIND_CPU`` -> cpu, ``KIND_GPU`` -> ``cuda:<gpu>``,
``KIND_MODEL`` -> where the file's weights are). On a GPU, the requests' host inputs are copied
once, into one pinned buffer, and sent in one asynchronous DMA on the instance's own CUDA
stream; GPU tensors from an earlier step are taken as they are (torch, or CuPy by DLPack).
Outputs stay on the GPU as CUDA tensors: the next GPU step of a pipeline takes them as is, and
a frontend copies them to host only when it answers (``dagserve.types.to_host``). On the CPU
outputs are numpy views of the tensors.

Parameters (strings, Triton's names where Triton has them):

* ``INFERENCE_MODE`` (default true): run under ``torch.inference_mode`` (else ``no_grad``);
* ``DISABLE_OPTIMIZED_EXECUTION`` (default false): TorchScript's profiling executor off;
* ``INTRA_OP_THREAD_COUNT`` / ``INTER_OP_THREAD_COUNT``: torch's thread pools (process-wide);
* ``precision``: ``fp32`` (default), ``fp16`` or ``bf16``: the weights and floating-point
  inputs are cast to it, and floating-point outputs cast back to their declared datatype, so
  clients still send and receive the declared types;
* ``output_memory``: ``device`` (default) keeps a GPU instance's outputs on the GPU; ``host``
  copies each batch's outputs to pinned host memory in one DMA before ``execute`` returns —
  cheaper for a model whose answers go straight to clients (one copy per batch, off the event
  loop, instead of one per response at the edge);
* ``batches_in_flight`` (default 3 on a GPU, 1 on the CPU): how many batches one instance
  runs at once, each from its own thread on its own CUDA stream, over the one copy of the
  weights. The next batches are staged (host inputs into pinned memory, the copy to the
  device) while the current one computes, so the GPU does not wait for the host between
  batches (ResNet-50 with one instance: 3 served more than 2 at batch 32 and 64, 4 no more
  than 3; docs/gpu.md). Set it to 1 for a module whose
  ``forward`` keeps state between calls and so must not run on two threads at once.

A batching model (``max_batch_size > 0``) runs a batch of requests as one ``forward`` over
their inputs concatenated along dimension 0, then splits the outputs. ``execute`` blocks in a
worker thread (``mode = "thread"``): torch releases the GIL while it computes.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError, DagserveError, InvalidInputError, ModelExecutionError, UnsupportedError
from ..types import DataType, InferRequest
from ._framework import execution_error, flag, integer, require
from ._imports import import_file
from .base import ExecuteMode, ModelContext, ModelFiles, Outputs

__all__ = ["FILES", "TorchModel", "load"]

FILES = ModelFiles(names=("model.py", "model.pt2", "model.pt"), frameworks=("torch",), extra="torch")
_INDEXED = re.compile(r"^(.+)__(\d+)$")
_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def load(context: ModelContext) -> TorchModel:
    """Load one instance of a PyTorch model on the instance group's device.

    Raises:
        ConfigError: torch missing (install ``dagserve[torch]``), no model file, a GPU instance
            without CUDA, a ``model.py`` without a module, or inputs/outputs torch cannot take.
    """
    owner = f"model '{context.name}' version {context.version}"
    torch = require("torch", extra=FILES.extra, owner=owner)
    for spec in (*context.config.input, *context.config.output):
        if spec.data_type is DataType.BYTES:
            raise ConfigError(f"{owner}: tensor '{spec.name}' is BYTES, which the pytorch backend does not support")
    path = _model_file(context, owner)
    device = _device(torch, context, owner)
    _set_threads(torch, context.config.parameters, owner)
    if path.suffix == ".py":
        model, arg_names = _load_module(torch, path, context, device, owner)
    elif path.suffix == ".pt2":
        model, arg_names = _load_exported(torch, path, device, owner)
    else:
        model, arg_names = _load_torchscript(torch, path, device, owner)
    if device is None:  # KIND_MODEL: wherever the file put the weights
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    return TorchModel(torch, model, arg_names, device, context, owner)


def _model_file(context: ModelContext, owner: str) -> Path:
    name = context.config.default_model_filename
    if name:
        path = context.version_dir / name
        if not path.is_file():
            raise ConfigError(f"{owner}: model file {path} not found (default_model_filename)")
        return path
    for candidate in FILES.names:
        path = context.version_dir / candidate
        if path.is_file():
            return path
    raise ConfigError(
        f"{owner}: no model file in {context.version_dir} (expected one of {', '.join(FILES.names)}, "
        "or set default_model_filename)"
    )


def _device(torch: Any, context: ModelContext, owner: str) -> Any:
    if context.instance_kind == "AUTO":  # Triton's KIND_AUTO: the GPU when there is one
        return torch.device("cuda", context.device_id) if torch.cuda.is_available() else torch.device("cpu")
    if context.instance_kind == "GPU":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{owner}: instance group kind KIND_GPU, but torch {torch.__version__} finds no CUDA device"
            )
        if context.device_id >= torch.cuda.device_count():
            raise ConfigError(
                f"{owner}: instance group asks for GPU {context.device_id}, "
                f"but there are {torch.cuda.device_count()}"
            )
        return torch.device("cuda", context.device_id)
    if context.instance_kind == "MODEL":
        return None
    return torch.device("cpu")


def _set_threads(torch: Any, parameters: Mapping[str, str], owner: str) -> None:
    intra = integer(parameters, "INTRA_OP_THREAD_COUNT", 0, owner)
    if intra > 0:
        torch.set_num_threads(intra)
    inter = integer(parameters, "INTER_OP_THREAD_COUNT", 0, owner)
    if inter > 0 and torch.get_num_interop_threads() != inter:
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as exc:  # torch allows it once, before any inter-op work
            raise ConfigError(f"{owner}: cannot set INTER_OP_THREAD_COUNT now: {exc}") from None


def _load_torchscript(torch: Any, path: Path, device: Any, owner: str) -> tuple[Any, list[str]]:
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError for bad archives
        raise ConfigError(f"{owner}: {path} is not a TorchScript archive: {_last_line(exc)}") from None
    schema = model.forward.schema
    args = list(schema.arguments)[1:]  # drop self
    names = [a.name for a in args]
    if len(args) == 1 and args[0].type.kind() == "DictType":
        names = ["**dict"]
    return model.eval(), names


def _load_exported(torch: Any, path: Path, device: Any, owner: str) -> tuple[Any, list[str]]:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{owner}: {path} is not a torch.export program: {_last_line(exc)}") from None
    model = program.module()
    if device is not None:
        model = model.to(device)
    try:
        names = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        names = []
    if not names or any(n.startswith("*") for n in names):
        names = list(program.graph_signature.user_inputs)
    return model, names


def _load_module(
    torch: Any, path: Path, context: ModelContext, device: Any, owner: str
) -> tuple[Any, list[str]]:
    module = import_file(path, f"torch_{context.name}_{context.version}")
    model = _build(torch, module, context, path, owner)
    weights = path.with_suffix(".pt")
    if weights.is_file():
        try:
            state = torch.load(str(weights), map_location=device or "cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{owner}: cannot load the weights {weights} into the module: {_last_line(exc)}") from None
    if device is not None:
        model = model.to(device)
    model.eval()
    names = [
        n for n, p in inspect.signature(model.forward).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    params = list(inspect.signature(model.forward).parameters.values())
    if len(params) == 1 and _is_dict_annotation(params[0].annotation):
        names = ["**dict"]
    return model, names


def _build(torch: Any, module: ModuleType, context: ModelContext, path: Path, owner: str) -> Any:
    factory = getattr(module, "create_model", None)
    if callable(factory):
        takes_context = len(inspect.signature(factory).parameters) > 0
        model = factory(context) if takes_context else factory()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{owner}: create_model() in {path} returned a {type(model).__name__}, not an nn.Module")
        return model
    classes = [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__
    ]
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise ConfigError(
            f"{owner}: {path} must define create_model() or exactly one nn.Module subclass (found: {found})"
        )
    return classes[0]()


def _is_dict_annotation(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.replace("typing.", "").lower().startswith("dict[")


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class TorchModel:
    """One loaded instance: a module on a device, called as Triton's naming conventions say."""

    mode: ExecuteMode = "thread"

    def __init__(self, torch: Any, model: Any, arg_names: list[str], device: Any, context: ModelContext, owner: str) -> None:
        self._torch = torch
        self._owner = owner
        self._device = device
        self._cuda = device.type == "cuda"
        config = context.config
        self._batching = config.batching
        self._input_names = [t.name for t in config.input]
        self._output_dtypes = {t.name: t.data_type for t in config.output}
        self._output_names = list(self._output_dtypes)
        params = config.parameters
        self._inference_mode = flag(params, "INFERENCE_MODE", True, owner)
        self._optimized = not flag(params, "DISABLE_OPTIMIZED_EXECUTION", False, owner)
        precision = params.get("precision", "fp32").strip().lower()
        if precision not in _PRECISIONS:
            raise ConfigError(f"{owner}: parameter precision must be fp32, fp16 or bf16, not {precision!r}")
        self._compute_dtype = None if precision == "fp32" else getattr(torch, _PRECISIONS[precision])
        memory = params.get("output_memory", "device").strip().lower()
        if memory not in ("device", "host"):
            raise ConfigError(f"{owner}: parameter output_memory must be device or host, not {memory!r}")
        self._host_outputs = self._cuda and memory == "host"
        if self._compute_dtype is not None:
            model = model.to(self._compute_dtype)
        self._model = model
        self._call = self._input_plan(arg_names)
        self._take_outputs = self._output_plan()
        self.concurrency = integer(params, "batches_in_flight", 3 if self._cuda else 1, owner)
        """Batches run at once (``backends.base``): each on a thread of its own."""
        if self.concurrency < 1:
            raise ConfigError(f"{owner}: parameter batches_in_flight must be 1 or more, not {self.concurrency}")
        # Each thread that runs this instance computes on a CUDA stream of its own, so batches
        # of one instance (and instances on one GPU) overlap.
        self._streams = threading.local()

    @property
    def _stream(self) -> Any:
        """This thread's CUDA stream (``None`` on the CPU)."""
        if not self._cuda:
            return None
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = self._torch.cuda.Stream(self._device)
        return stream

    # -- how inputs reach forward() and outputs come back ------------------------------------
    def _input_plan(self, arg_names: list[str]) -> Callable[[dict[str, Any]], Any]:
        names = self._input_names
        if arg_names == ["**dict"]:
            return lambda tensors: self._model(tensors)
        indexed = [_INDEXED.match(n) for n in names]
        if names and all(indexed):
            order = sorted(names, key=lambda n: int(_INDEXED.match(n).group(2)))  # type: ignore[union-attr]
            return lambda tensors: self._model(*[tensors[n] for n in order if n in tensors])
        if names and all(n in arg_names for n in names):
            return lambda tensors: self._model(*_by_argument(arg_names, tensors))
        return lambda tensors: self._model(*[tensors[n] for n in names if n in tensors])

    def _output_plan(self) -> Callable[[Any], dict[str, Any]]:
        names = self._output_names
        torch = self._torch
        indexed = [_INDEXED.match(n) for n in names]
        positions = (
            {n: int(m.group(2)) for n, m in zip(names, indexed) if m}
            if names and all(indexed) else {n: i for i, n in enumerate(names)}
        )
        owner = self._owner

        def take(result: Any) -> dict[str, Any]:
            if isinstance(result, torch.Tensor):
                result = (result,)
            if isinstance(result, Mapping):
                missing = [n for n in names if n not in result]
                if missing:
                    raise ModelExecutionError(f"{owner}: forward() returned no output {', '.join(missing)}")
                return {n: result[n] for n in names}
            if not isinstance(result, (tuple, list)):
                raise ModelExecutionError(
                    f"{owner}: forward() returned a {type(result).__name__}, not tensors"
                )
            out = {}
            for n, i in positions.items():
                if i >= len(result):
                    raise ModelExecutionError(
                        f"{owner}: forward() returned {len(result)} tensors, output '{n}' needs index {i}"
                    )
                out[n] = result[i]
            return out

        return take

    # -- execution ----------------------------------------------------------------------------
    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Run a batch (one ``forward`` for a batching model, else one per request)."""
        if self._batching:
            return self._run(requests)
        results: list[Outputs | BaseException] = []
        for request in requests:
            results.extend(self._run([request]))
        return results

    def _run(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        torch = self._torch
        try:
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode() if self._inference_mode else torch.no_grad())
                if not self._optimized:
                    stack.enter_context(torch.jit.optimized_execution(False))
                stream = self._stream
                if stream is not None:
                    stack.enter_context(torch.cuda.stream(stream))
                tensors, sizes = self._gather(requests)
                outputs = self._take_outputs(self._call(tensors))
                outputs = {n: self._cast_back(n, t) for n, t in outputs.items()}
                if self._host_outputs:
                    outputs = {n: self._to_pinned(t) for n, t in outputs.items()}
                parts = self._split(outputs, sizes)
            if stream is not None:
                # Outputs leave this thread complete, so a consumer on another stream (or the
                # host copy at the edge) never sees a tensor still being written.
                stream.synchronize()
        except DagserveError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad batch
            return [execution_error(self._owner, "PyTorch", exc)] * len(requests)
        return parts

    def _gather(self, requests: Sequence[InferRequest]) -> tuple[dict[str, Any], list[int]]:
        torch = self._torch
        sizes = [_batch_size(r, self._input_names) for r in requests] if self._batching else [1]
        tensors: dict[str, Any] = {}
        for name in self._input_names:
            arrays = [r.inputs[name] for r in requests if name in r.inputs]
            if not arrays:
                continue
            if len(arrays) != len(requests):
                raise InvalidInputError(f"optional input '{name}' is given in only some requests of a batch")
            bf16 = requests[0].datatype(name) is DataType.BF16
            if all(isinstance(a, np.ndarray) for a in arrays):
                tensor = self._from_host(name, arrays, bf16)
            else:
                parts = [self._to_device(a, bf16) for a in arrays]
                tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if self._compute_dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self._compute_dtype)
            tensors[name] = tensor
        return tensors, sizes

    def _from_host(self, name: str, arrays: list[np.ndarray], bf16: bool) -> Any:
        """One tensor on the device from the requests' host arrays, batched along dim 0.

        On a GPU each array is copied once, straight into its slice of one pinned buffer, which
        then goes to the device in one asynchronous DMA on this instance's stream.
        """
        torch = self._torch
        first = arrays[0]
        if first.dtype == np.object_:
            raise UnsupportedError(f"{self._owner}: BYTES tensors cannot reach a PyTorch model")
        if any(a.shape[1:] != first.shape[1:] or a.dtype != first.dtype for a in arrays[1:]):
            shapes = ", ".join(str(list(a.shape)) for a in arrays)
            raise InvalidInputError(f"input '{name}': cannot batch tensors of different shapes ({shapes})")
        if self._cuda:
            shape = (sum(a.shape[0] for a in arrays), *first.shape[1:]) if first.ndim else ()
            staged = torch.empty(shape, dtype=_torch_dtype(torch, first.dtype), pin_memory=True)
            host, offset = staged.numpy(), 0
            if first.ndim == 0:  # a scalar input of a model that does not batch: alone
                host[...] = first
            for array in arrays if first.ndim else ():
                host[offset:offset + len(array)] = array
                offset += len(array)
            tensor = staged.to(self._device, non_blocking=True)
        else:
            array = first if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            # torch.from_numpy needs a writable array; request bodies are read-only buffers.
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        return tensor.view(torch.bfloat16) if bf16 else tensor

    def _to_pinned(self, tensor: Any) -> Any:
        # One asynchronous copy of the whole batch on this stream, done before execute returns.
        pinned = self._torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor, non_blocking=True)
        return pinned

    def _to_device(self, array: Any, bf16: bool) -> Any:
        torch = self._torch
        if isinstance(array, torch.Tensor):
            tensor = array
        else:  # a CuPy array or any other DLPack producer: zero-copy on its device
            tensor = torch.from_dlpack(array)
        if bf16 and tensor.dtype != torch.bfloat16:
            tensor = tensor.view(torch.bfloat16)
        if tensor.device != self._device:
            tensor = tensor.to(self._device, non_blocking=True)
        elif self._cuda and tensor.is_cuda:
            # Produced on another stream: keep the allocator from reusing it under us.
            tensor.record_stream(self._stream)
        return tensor

    def _cast_back(self, name: str, tensor: Any) -> Any:
        if not isinstance(tensor, self._torch.Tensor):
            raise ModelExecutionError(f"{self._owner}: output '{name}' is a {type(tensor).__name__}, not a tensor")
        if self._compute_dtype is not None and tensor.dtype == self._compute_dtype:
            declared = self._output_dtypes[name]
            if declared is not DataType.BF16 or tensor.dtype != self._torch.bfloat16:
                tensor = tensor.to(declared.torch_dtype)
        return tensor.detach()

    def _split(self, outputs: dict[str, Any], sizes: list[int]) -> list[Outputs | BaseException]:
        if len(sizes) == 1:
            return [{n: self._export(t) for n, t in outputs.items()}]
        per_request: list[dict[str, Any]] = [{} for _ in sizes]
        for name, tensor in outputs.items():
            if tensor.dim() == 0 or tensor.shape[0] != sum(sizes):
                raise ModelExecutionError(
                    f"{self._owner}: output '{name}' has shape {list(tensor.shape)}, "
                    f"whose first dimension is not the batch of {sum(sizes)}"
                )
            for i, part in enumerate(self._torch.split(tensor, sizes, dim=0)):
                per_request[i][name] = self._export(part)
        return list(per_request)

    def _export(self, tensor: Any) -> Any:
        if tensor.is_cuda:
            return tensor  # stays on the GPU; copied to host only at the edge
        if tensor.dtype == self._torch.bfloat16:
            return tensor.view(self._torch.uint16).numpy()
        return tensor.numpy()

    def close(self) -> None:
        self._model = None
        if self._cuda:
            self._torch.cuda.empty_cache()


def _by_argument(arg_names: Sequence[str], tensors: Mapping[str, Any]) -> list[Any]:
    # Positionally, in forward's order (exported programs take no keywords); an absent
    # optional input in the middle becomes None, as its default would be.
    last = max((arg_names.index(n) for n in tensors), default=-1)
    return [tensors.get(n) for n in arg_names[:last + 1]]


def _batch_size(request: InferRequest, names: Sequence[str]) -> int:
    for n in names:
        if n in request.inputs:
            shape = request.inputs[n].shape
            return int(shape[0]) if len(shape) else 1
    return 1


def _torch_dtype(torch: Any, dtype: np.dtype[Any]) -> Any:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
