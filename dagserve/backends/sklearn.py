"""The scikit-learn backend (``backend: sklearn``): a fitted estimator or ``Pipeline`` saved
with joblib (or pickle) serves without a ``model.py``, as MLServer's sklearn runtime does.

Files, in the version directory: ``model.joblib``, ``model.pkl`` or ``model.pickle`` (the
first present; ``default_model_filename`` overrides). Loading one runs code from the file
(it is a pickle), so it is confined like ``model.py``: only files inside the repository
(see docs/security.md).

Outputs are named after the estimator's methods, as in MLServer: ``predict`` and, where the
estimator has it, ``predict_proba``. Only the outputs a batch's requests ask for are computed.
The one input (any name) holds the rows: ``dims: [n_features]`` with ``max_batch_size`` > 0
(the batch is the rows), or ``[-1, n_features]`` without. A ``BYTES`` input with ``dims: [1]``
is one text per row, given to the estimator as a list of ``str`` (a text ``Pipeline``
starting with a vectorizer).

Auto-complete, when the config declares no inputs or no outputs: the input ``input__0``, FP64
``[n_features_in_]``, and ``max_batch_size`` 64 with a dynamic batcher; the outputs from one
prediction on a row of zeros (``predict``: INT64, FP64 or BYTES after the class labels;
``predict_proba``: FP64 ``[n_classes]``, when the estimator has it).

scikit-learn and joblib are imported inside ``load()`` (extra ``dagserve[sklearn]``);
``execute`` runs in the instance's worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DagserveError, ModelExecutionError
from ..repository.config import DynamicBatching, ModelConfig, TensorConfig
from ..types import DataType, InferRequest, to_host
from ._framework import execution_error, require
from ._imports import user_code_lock
from .base import ExecuteMode, ModelContext, ModelFiles, Outputs, concat_requests, run_batch, split_outputs

__all__ = ["FILES", "OUTPUTS", "SklearnModel", "complete_config", "load"]

FILES = ModelFiles(names=("model.joblib", "model.pkl", "model.pickle"), frameworks=("sklearn",), extra="sklearn")

OUTPUTS = ("predict", "predict_proba")
"""The output names, after the estimator methods that make them (MLServer's names)."""

DEFAULT_MAX_BATCH_SIZE = 64
"""What auto-complete sets ``max_batch_size`` to: the rows of several requests in one call."""


def _model_file(config: ModelConfig, version_dir: Path, owner: str) -> Path:
    for name in FILES.candidates(config):
        if (version_dir / name).is_file():
            return version_dir / name
    raise ConfigError(f"{owner}: no model file in {version_dir} (expected {' or '.join(FILES.candidates(config))})")


def _read(path: Path, owner: str) -> Any:
    """The estimator in ``path``; unpickling imports scikit-learn, under the user-code lock."""
    require("sklearn", extra=FILES.extra, owner=owner)
    joblib = require("joblib", extra=FILES.extra, owner=owner)
    try:
        with user_code_lock:
            estimator = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - unpickling may raise anything
        raise ConfigError(f"{owner}: cannot load {path} with joblib: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(estimator, "predict", None)):
        raise ConfigError(f"{owner}: {path} holds a {type(estimator).__name__}, which has no predict method")
    return estimator


# -- auto-complete -----------------------------------------------------------------------------
def complete_config(config: ModelConfig, version_dir: Path) -> ModelConfig:
    """``config`` with the input, outputs and batching read from the estimator when it
    declares no inputs or no outputs (see the module doc). Blocking: it loads the model.

    Raises:
        ConfigError: scikit-learn missing, no model file, or nothing to read the input from.
    """
    if config.input and config.output:
        return config
    owner = f"model '{config.name}'"
    estimator = _read(_model_file(config, version_dir, owner), owner)
    update: dict[str, Any] = {}
    batching = config.batching
    if not config.input:
        n_features = getattr(estimator, "n_features_in_", None)
        if not isinstance(n_features, int):
            raise ConfigError(
                f"{owner}: auto-complete failed: the {type(estimator).__name__} does not say how many features "
                "it reads (no n_features_in_); declare the input in the config"
            )
        if config.max_batch_size == 0:
            update["max_batch_size"], batching = DEFAULT_MAX_BATCH_SIZE, True
            if config.dynamic_batching is None and config.sequence_batching is None:
                update["dynamic_batching"] = DynamicBatching()
        dims = (n_features,) if batching else (-1, n_features)
        update["input"] = (TensorConfig(name="input__0", data_type=DataType.FP64, dims=dims),)
    if not config.output:
        tensor = (update.get("input") or config.input)[0]
        sample = _rows(_zeros(tensor, batching), tensor.data_type)
        outputs = []
        for name in OUTPUTS:
            method = getattr(estimator, name, None)  # a property that raises for SVC(probability=False)
            if method is None:
                continue
            try:
                result = np.asarray(method(sample))
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(
                    f"{owner}: auto-complete failed: {name} on a row of zeros raised {type(exc).__name__}: {exc}; "
                    "declare the outputs in the config"
                ) from None
            per_row = tuple(result.shape[1:]) or (1,)
            dims = per_row if batching else (-1, *result.shape[1:])
            outputs.append(TensorConfig(name=name, data_type=_datatype(result), dims=dims))
        update["output"] = tuple(outputs)
    return config.model_copy(update=update)


def _zeros(tensor: TensorConfig, batching: bool) -> np.ndarray:
    dims = tuple(1 if d < 0 else d for d in tensor.dims)
    shape = (1, *dims) if batching else dims
    if tensor.data_type is DataType.BYTES:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=tensor.data_type.numpy_dtype)


def _datatype(result: np.ndarray) -> DataType:
    if result.dtype.kind in "iu":
        return DataType.INT64
    if result.dtype.kind == "b":
        return DataType.BOOL
    if result.dtype.kind == "f":
        return DataType.FP64
    return DataType.BYTES


def _rows(array: np.ndarray, datatype: DataType) -> Any:
    """What the estimator is given: the rows, or for BYTES a list of one ``str`` per row."""
    if datatype is DataType.BYTES:
        column = array.reshape(len(array), -1)[:, 0]
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in column]
    return array


# -- loading -----------------------------------------------------------------------------------
def load(context: ModelContext) -> SklearnModel:
    """Load the estimator for one instance.

    Raises:
        ConfigError: scikit-learn or joblib missing (install ``dagserve[sklearn]``), no model
            file, a file that does not load, or inputs/outputs the estimator cannot serve.
    """
    config = context.config
    owner = f"model '{context.name}' version {context.version}"
    estimator = _read(_model_file(config, context.version_dir, owner), owner)
    if len(config.input) != 1:
        raise ConfigError(f"{owner}: a scikit-learn model has one input (the rows); the config declares {len(config.input)}")
    tensor = config.input[0]
    rank = 1 if config.batching else 2
    if len(tensor.dims) != rank:
        raise ConfigError(
            f"{owner}: input '{tensor.name}' dims must be "
            f"{'[n_features]' if config.batching else '[-1, n_features]'}, not {list(tensor.dims)}"
        )
    if tensor.data_type is DataType.BYTES and tensor.dims[-1] != 1:
        raise ConfigError(f"{owner}: a BYTES input '{tensor.name}' is one text per row: dims must end in 1")
    n_features = getattr(estimator, "n_features_in_", None)
    if isinstance(n_features, int) and tensor.dims[-1] not in (-1, n_features) and tensor.data_type is not DataType.BYTES:
        raise ConfigError(f"{owner}: the estimator reads {n_features} features, but input '{tensor.name}' dims say {tensor.dims[-1]}")
    if not config.output:
        raise ConfigError(f"{owner}: declare the outputs ({', '.join(OUTPUTS)})")
    for output in config.output:
        if output.name not in OUTPUTS:
            raise ConfigError(
                f"{owner}: output '{output.name}' is not one a scikit-learn model gives (outputs are named after "
                f"the estimator's methods: {', '.join(OUTPUTS)})"
            )
        if getattr(estimator, output.name, None) is None:
            raise ConfigError(f"{owner}: output '{output.name}': the {type(estimator).__name__} has no {output.name} method")
    return SklearnModel(estimator, config, owner)


class SklearnModel:
    """One loaded estimator answering ``predict`` / ``predict_proba``."""

    mode: ExecuteMode = "thread"

    def __init__(self, estimator: Any, config: ModelConfig, owner: str) -> None:
        self._estimator = estimator
        self._owner = owner
        self._batching = config.batching
        self._input = config.input[0].name
        self._input_type = config.input[0].data_type
        self._outputs = {o.name: o for o in config.output}

    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Predict a batch: one call per method over every row of a batching model's requests."""
        return run_batch(requests, self._run, batching=self._batching)

    def _run(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        wanted: set[str] = set()
        for request in requests:
            names = request.output_names()
            wanted.update(self._outputs if names is None else names)
        try:
            if self._batching:
                inputs, sizes = concat_requests(requests, [self._input])
            else:
                inputs, sizes = {self._input: requests[0].inputs[self._input]}, [1]
            array = to_host(inputs[self._input])
            rows = _rows(array, self._input_type)
            n = len(rows)
            outputs = {name: self._shape(name, getattr(self._estimator, name)(rows), n) for name in OUTPUTS if name in wanted}
        except DagserveError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # noqa: BLE001 - scikit-learn raises its own errors (bad feature counts...)
            return [execution_error(self._owner, "scikit-learn", exc)] * len(requests)
        return list(split_outputs(outputs, sizes)) if self._batching else [outputs]

    def _shape(self, name: str, result: Any, n: int) -> np.ndarray:
        spec = self._outputs[name]
        array = np.asarray(result)
        if spec.data_type is DataType.BYTES:
            array = np.array([v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()],
                             dtype=object).reshape(array.shape)
        else:
            array = array.astype(spec.data_type.numpy_dtype, copy=False)
        shape = (n, *spec.dims) if self._batching else (n, *spec.dims[1:])
        try:
            return array.reshape(shape)
        except ValueError:
            raise ModelExecutionError(
                f"{self._owner}: {name} gives {list(array.shape)} for {n} rows, which does not fit output "
                f"'{name}' dims {list(spec.dims)}"
            ) from None

    def close(self) -> None:
        self._estimator = None
