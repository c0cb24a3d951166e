"""The ONNX Runtime backend (``platform: "onnxruntime_onnx"`` or ``backend: "onnxruntime"``).

The version directory holds ``model.onnx`` (or ``default_model_filename``). The model is set
up as Triton's ORT backend sets it up, from the same config fields:

* **Execution providers**: a ``KIND_GPU`` instance runs on the CUDA provider on its GPU (which
  needs ``onnxruntime-gpu``), behind TensorRT when the config asks for it::

      optimization { execution_accelerators {
        gpu_execution_accelerator: [{ name: "tensorrt"
          parameters { key: "precision_mode" value: "FP16" } }] } }

  (``name: "cuda"`` sets CUDA provider options the same way). A CPU instance runs on the CPU
  provider, or OpenVINO when ``cpu_execution_accelerator`` names ``openvino``.
* **Session options**: ``optimization { graph { level } }`` (-1 basic, 1 extended, 2 none,
  otherwise all), and the ``parameters`` ``intra_op_thread_count``, ``inter_op_thread_count``,
  ``execution_mode`` (0 sequential, 1 parallel), ``enable_mem_arena``, ``enable_mem_pattern``,
  ``session.use_device_allocator_for_initializers``, ``memory.enable_memory_arena_shrinkage``
  and the older CUDA ones (``cudnn_conv_algo_search``, ``gpu_mem_limit``,
  ``arena_extend_strategy``, ``do_copy_in_default_stream``).
* **Config auto-complete** (:func:`complete_config`): when the config declares no inputs or no
  outputs, they are read from the graph (names, datatypes, dims); a graph whose every input
  and output has a variable first dimension can batch, so ``max_batch_size`` 0 becomes 4
  (Triton's default) with ``dynamic_batching`` on; a config asking to batch a graph that
  cannot is refused. ``/v2/models/<m>/config`` shows the completed config.

A batching model runs a batch of requests as one ``session.run`` over inputs concatenated
along dimension 0. Tensors reach ONNX Runtime through host memory: a GPU tensor from an
earlier pipeline step is copied to host first, and outputs come back as numpy arrays (the
Python API of ONNX Runtime has no zero-copy hand-over of CUDA outputs to torch or CuPy).
``execute`` blocks in a worker thread (``mode = "thread"``); ONNX Runtime releases the GIL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DagserveError, InvalidInputError
from ..repository.config import DynamicBatching, ModelConfig, Reshape, TensorConfig
from ..types import DataType, InferRequest, to_host
from ._framework import execution_error, flag, integer, require
from .base import ExecuteMode, ModelContext, ModelFiles, Outputs, concat_requests, run_batch, split_outputs

__all__ = ["FILES", "OnnxModel", "complete_config", "load"]

FILES = ModelFiles(names=("model.onnx",), frameworks=("onnxruntime",), extra="onnx")

DEFAULT_MAX_BATCH_SIZE = 4
"""What auto-complete sets ``max_batch_size`` to for a graph that can batch (Triton's default)."""

_ORT_TYPES = {
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(uint16)": DataType.UINT16,
    "tensor(uint32)": DataType.UINT32,
    "tensor(uint64)": DataType.UINT64,
    "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16,
    "tensor(float)": DataType.FP32,
    "tensor(double)": DataType.FP64,
    "tensor(string)": DataType.BYTES,
    "tensor(bfloat16)": DataType.BF16,
}
# Triton's names for TensorRT provider options where they differ from ONNX Runtime's.
_TRT_RENAMED = {"max_workspace_size_bytes": "trt_max_workspace_size"}
_TRT_PASSED = {
    "trt_max_partition_iterations", "trt_min_subgraph_size", "int8_calibration_table_name",
    "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core", "trt_engine_cache_enable",
    "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable", "trt_timing_cache_path",
    "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable",
    "trt_sparsity_enable", "trt_builder_optimization_level", "trt_auxiliary_streams",
    "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable",
    "trt_dump_ep_context_model", "trt_ep_context_file_path", "trt_ep_context_embed_mode",
}
_CUDA_LEGACY = {
    "cudnn_conv_algo_search": {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"},
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
}


@dataclass(frozen=True, slots=True)
class _GraphTensor:
    """A graph input or output as ONNX Runtime reports it; -1 for a symbolic dimension."""

    name: str
    datatype: DataType | None
    onnx_type: str
    shape: tuple[int, ...]


# -- auto-complete ----------------------------------------------------------------------------
def complete_config(config: ModelConfig, version_dir: Path) -> ModelConfig:
    """``config`` with inputs, outputs and ``max_batch_size`` read from the ONNX graph in
    ``version_dir`` when it declares no inputs or no outputs (Triton's auto-complete);
    otherwise ``config`` unchanged. Blocking: it opens the model.

    Raises:
        ConfigError: onnxruntime missing, no model file, a graph ONNX Runtime cannot open, or
            a ``max_batch_size`` the graph cannot honour.
    """
    if config.input and config.output:
        return config
    owner = f"model '{config.name}'"
    ort = require("onnxruntime", extra=FILES.extra, owner=owner)
    path = _model_file(config, version_dir, owner)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only reading I/O
    session = _open(ort, path, options, ["CPUExecutionProvider"], owner)
    return _complete(config, _graph_inputs(session), _graph_outputs(session), owner)


def _complete(
    config: ModelConfig, inputs: Sequence[_GraphTensor], outputs: Sequence[_GraphTensor], owner: str
) -> ModelConfig:
    can_batch = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    update: dict[str, Any] = {}
    max_batch = config.max_batch_size
    if can_batch:
        if max_batch == 0:
            max_batch = update["max_batch_size"] = DEFAULT_MAX_BATCH_SIZE
        if max_batch > 1 and config.dynamic_batching is None and config.sequence_batching is None:
            update["dynamic_batching"] = DynamicBatching()
    elif max_batch != 0:
        raise ConfigError(
            f"{owner}: auto-complete failed: the graph cannot batch (not every input and output has a "
            f"variable first dimension), but max_batch_size is {max_batch}"
        )
    if not config.input:
        update["input"] = tuple(_tensor_config(t, max_batch > 0, owner) for t in inputs)
    if not config.output:
        update["output"] = tuple(_tensor_config(t, max_batch > 0, owner) for t in outputs)
    return config.model_copy(update=update)


def _tensor_config(tensor: _GraphTensor, batching: bool, owner: str) -> TensorConfig:
    if tensor.datatype is None:
        raise ConfigError(f"{owner}: auto-complete failed: tensor '{tensor.name}' has type {tensor.onnx_type}")
    dims = tensor.shape[1:] if batching else tensor.shape
    if dims:
        return TensorConfig(name=tensor.name, data_type=tensor.datatype, dims=dims)
    # A scalar per batch item: clients send [batch, 1], the graph gets [batch].
    return TensorConfig(
        name=tensor.name, data_type=tensor.datatype, dims=(1,), reshape=Reshape(shape=()) if batching else None
    )


# -- loading ----------------------------------------------------------------------------------
def load(context: ModelContext) -> OnnxModel:
    """Open one ONNX Runtime session for an instance, on the providers its config picks.

    Raises:
        ConfigError: onnxruntime missing (install ``dagserve[onnx]``), no model file, a provider
            this onnxruntime lacks (GPU needs ``onnxruntime-gpu``), a bad parameter, or a config
            whose inputs/outputs do not match the graph.
    """
    config = context.config
    owner = f"model '{context.name}' version {context.version}"
    ort = require("onnxruntime", extra=FILES.extra, owner=owner)
    path = _model_file(config, context.version_dir, owner)
    session = _open(ort, path, _session_options(ort, config, owner), _providers(ort, context, owner), owner)
    _check_io(config, _graph_inputs(session), _graph_outputs(session), owner)
    run_options = ort.RunOptions()
    shrinkage = config.parameters.get("memory.enable_memory_arena_shrinkage")
    if shrinkage:
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", shrinkage)
    return OnnxModel(session, run_options, config, owner)


def _model_file(config: ModelConfig, version_dir: Path, owner: str) -> Path:
    path = version_dir / FILES.candidates(config)[0]
    if not path.exists():
        raise ConfigError(f"{owner}: model file {path} not found")
    return path


def _open(ort: Any, path: Path, options: Any, providers: list[Any], owner: str) -> Any:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types per failure
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ConfigError(f"{owner}: ONNX Runtime cannot open {path}: {lines[-1] if lines else exc}") from None


def _session_options(ort: Any, config: ModelConfig, owner: str) -> Any:
    params = config.parameters
    options = ort.SessionOptions()
    graph = (config.optimization or {}).get("graph") or {}
    raw = graph.get("level", 0)
    try:
        level = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{owner}: optimization graph level must be an integer (-1 basic, 1 extended, 2 none, "
            f"otherwise all), not {raw!r}"
        ) from None
    levels = ort.GraphOptimizationLevel
    options.graph_optimization_level = {
        -1: levels.ORT_ENABLE_BASIC, 1: levels.ORT_ENABLE_EXTENDED, 2: levels.ORT_DISABLE_ALL
    }.get(level, levels.ORT_ENABLE_ALL)
    mode = integer(params, "execution_mode", 0, owner)
    if mode not in (0, 1):
        raise ConfigError(f"{owner}: parameter execution_mode must be 0 (sequential) or 1 (parallel), not {mode}")
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    intra = integer(params, "intra_op_thread_count", 0, owner)
    if intra > 0:
        options.intra_op_num_threads = intra
    inter = integer(params, "inter_op_thread_count", 0, owner)
    if inter > 0:
        options.inter_op_num_threads = inter
    if "enable_mem_arena" in params:
        options.enable_cpu_mem_arena = flag(params, "enable_mem_arena", True, owner)
    if "enable_mem_pattern" in params:
        options.enable_mem_pattern = flag(params, "enable_mem_pattern", True, owner)
    key = "session.use_device_allocator_for_initializers"
    if key in params:
        options.add_session_config_entry(key, params[key])
    return options


def _providers(ort: Any, context: ModelContext, owner: str) -> list[Any]:
    accelerators = ((context.config.optimization or {}).get("execution_accelerators")) or {}
    available = set(ort.get_available_providers())
    providers: list[Any] = []
    gpu = context.instance_kind == "GPU" or (
        context.instance_kind == "AUTO" and "CUDAExecutionProvider" in available  # KIND_AUTO
    )
    if gpu:
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                f"{owner}: instance group kind KIND_GPU needs ONNX Runtime with CUDA "
                f"(pip install onnxruntime-gpu); this one has {', '.join(sorted(available))}"
            )
        device = str(context.device_id)
        cuda = {"device_id": device, **_legacy_cuda_options(context.config.parameters)}
        for accelerator in accelerators.get("gpu_execution_accelerator", ()):
            name = accelerator.get("name", "")
            options = {str(k): str(v) for k, v in (accelerator.get("parameters") or {}).items()}
            if name == "tensorrt":
                if "TensorrtExecutionProvider" not in available:
                    raise ConfigError(
                        f"{owner}: the tensorrt execution accelerator needs ONNX Runtime built with TensorRT"
                    )
                providers.append(("TensorrtExecutionProvider", {**_trt_options(options, owner), "device_id": device}))
            elif name == "cuda":
                cuda.update(options)
            else:
                raise ConfigError(f"{owner}: unknown GPU execution accelerator '{name}' (use tensorrt or cuda)")
        providers.append(("CUDAExecutionProvider", cuda))
    else:
        for accelerator in accelerators.get("cpu_execution_accelerator", ()):
            name = accelerator.get("name", "")
            if name != "openvino":
                raise ConfigError(f"{owner}: unknown CPU execution accelerator '{name}' (use openvino)")
            if "OpenVINOExecutionProvider" not in available:
                raise ConfigError(f"{owner}: the openvino execution accelerator needs onnxruntime-openvino")
            providers.append(("OpenVINOExecutionProvider", {"device_type": "CPU"}))
    providers.append("CPUExecutionProvider")
    return providers


def _trt_options(options: Mapping[str, str], owner: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in options.items():
        if key == "precision_mode":
            precision = value.upper()
            if precision not in ("FP32", "FP16", "INT8"):
                raise ConfigError(f"{owner}: tensorrt precision_mode must be FP32, FP16 or INT8, not {value!r}")
            out["trt_fp16_enable"] = "True" if precision in ("FP16", "INT8") else "False"
            out["trt_int8_enable"] = "True" if precision == "INT8" else "False"
        elif key in _TRT_RENAMED:
            out[_TRT_RENAMED[key]] = value
        elif key in _TRT_PASSED:
            out[key if key.startswith("trt_") else "trt_" + key] = value
        else:
            raise ConfigError(f"{owner}: unknown parameter '{key}' for the tensorrt execution accelerator")
    return out


def _legacy_cuda_options(params: Mapping[str, str]) -> dict[str, str]:
    # Triton still reads these from the model's parameters (deprecated there).
    out = {}
    for key, names in _CUDA_LEGACY.items():
        if key in params:
            out[key] = names.get(params[key], params[key])
    for key in ("gpu_mem_limit", "do_copy_in_default_stream"):
        if key in params:
            out[key] = params[key]
    return out


def _graph_inputs(session: Any) -> list[_GraphTensor]:
    return [_graph_tensor(t) for t in session.get_inputs()]


def _graph_outputs(session: Any) -> list[_GraphTensor]:
    return [_graph_tensor(t) for t in session.get_outputs()]


def _graph_tensor(node: Any) -> _GraphTensor:
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or ()))
    return _GraphTensor(name=node.name, datatype=_ORT_TYPES.get(node.type), onnx_type=node.type, shape=shape)


def _check_io(
    config: ModelConfig, inputs: Sequence[_GraphTensor], outputs: Sequence[_GraphTensor], owner: str
) -> None:
    if not config.input or not config.output:
        _complete(config, inputs, outputs, owner)  # raises why auto-complete could not fill them
        raise ConfigError(f"{owner}: the config declares no inputs or no outputs and auto-complete did not run")
    for kind, declared, graph in (("input", config.input, inputs), ("output", config.output, outputs)):
        by_name = {t.name: t for t in graph}
        for tensor in declared:
            found = by_name.get(tensor.name)
            if found is None:
                raise ConfigError(
                    f"{owner}: {kind} '{tensor.name}' is not in the ONNX graph (its {kind}s: {', '.join(by_name)})"
                )
            if found.datatype is not tensor.data_type:
                raise ConfigError(
                    f"{owner}: {kind} '{tensor.name}' is {tensor.data_type.config_name} in the config but "
                    f"{found.onnx_type} in the graph"
                )
            if tensor.data_type is DataType.BF16:
                raise ConfigError(f"{owner}: {kind} '{tensor.name}' is BF16, which the onnxruntime backend does not take")
            if config.batching and (not found.shape or found.shape[0] != -1):
                raise ConfigError(
                    f"{owner}: max_batch_size is {config.max_batch_size}, but {kind} '{tensor.name}' has a fixed "
                    f"first dimension in the graph ({list(found.shape)}), so the model cannot batch"
                )
            model_dims = tensor.reshape.shape if tensor.reshape is not None else tensor.dims
            full = (-1, *model_dims) if config.batching else tuple(model_dims)
            if len(full) != len(found.shape) or any(
                c != -1 and g != -1 and c != g for c, g in zip(full, found.shape)
            ):
                raise ConfigError(
                    f"{owner}: {kind} '{tensor.name}' has shape {list(full)} in the config but "
                    f"{list(found.shape)} in the graph"
                )
    missing = [t.name for t in inputs if t.name not in {c.name for c in config.input}]
    if missing:
        raise ConfigError(f"{owner}: the graph needs input(s) {', '.join(missing)}, which the config does not declare")


# -- execution --------------------------------------------------------------------------------
class OnnxModel:
    """One ONNX Runtime session serving one instance."""

    mode: ExecuteMode = "thread"

    def __init__(self, session: Any, run_options: Any, config: ModelConfig, owner: str) -> None:
        self._session = session
        self._run_options = run_options
        self._owner = owner
        self._batching = config.batching
        self._input_names = [t.name for t in config.input]
        self._output_names = [t.name for t in config.output]
        self._strings = {t.name for t in (*config.input, *config.output) if t.data_type is DataType.BYTES}
        self._input_reshape = {t.name: t.reshape.shape for t in config.input if t.reshape is not None}
        self._output_dims = {t.name: t.dims for t in config.output if t.reshape is not None}

    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Run a batch: one ``session.run`` for a batching model, else one per request."""
        return run_batch(requests, self._run, batching=self._batching)

    def _run(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        try:
            hosted = [_on_host(r, self._input_names) for r in requests]
            if self._batching:
                inputs, sizes = concat_requests(hosted, self._input_names)
            else:
                inputs, sizes = dict(hosted[0].inputs), [1]
            feeds = {n: self._feed(n, a) for n, a in inputs.items()}
            values = self._session.run(self._output_names, feeds, self._run_options)
            outputs = {n: self._fetch(n, v, sum(sizes)) for n, v in zip(self._output_names, values)}
        except DagserveError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            return [execution_error(self._owner, "ONNX Runtime", exc)] * len(requests)
        return list(split_outputs(outputs, sizes))

    def _feed(self, name: str, array: np.ndarray) -> np.ndarray:
        if name in self._input_reshape:
            shape = self._input_reshape[name]
            try:
                array = array.reshape((array.shape[0], *shape) if self._batching else shape)
            except ValueError:
                raise InvalidInputError(f"{self._owner}: input '{name}' cannot be reshaped to {list(shape)}") from None
        if name in self._strings:
            # ONNX Runtime takes strings as str objects; the wire gives bytes.
            return np.vectorize(_decode, otypes=[np.object_])(array) if array.size else array.astype(np.object_)
        return array

    def _fetch(self, name: str, value: Any, batch: int) -> np.ndarray:
        array = np.asarray(value)
        if name in self._output_dims:
            dims = self._output_dims[name]
            array = array.reshape((batch, *dims) if self._batching else dims)
        if name in self._strings:
            array = np.vectorize(_encode, otypes=[np.object_])(array) if array.size else array.astype(np.object_)
        return array

    def close(self) -> None:
        self._session = None


def _on_host(request: InferRequest, names: Sequence[str]) -> InferRequest:
    if all(isinstance(request.inputs.get(n), (np.ndarray, type(None))) for n in names):
        return request
    inputs = {n: to_host(a) for n, a in request.inputs.items()}
    return InferRequest(inputs=inputs, id=request.id, datatypes=request.datatypes, parameters=request.parameters)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
