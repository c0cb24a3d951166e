"""The FIL backend for tree models (``backend: "fil"``), configured as Triton's FIL backend.

One input (``input__0``, FP32, ``dims: [n_features]``) and one output (``output__0``). The
``parameters``:

* ``model_type``: ``xgboost_json`` (file ``xgboost.json``), ``xgboost_ubj`` (``xgboost.ubj``),
  ``xgboost`` (legacy binary, ``xgboost.model``), ``lightgbm`` (``model.txt``) or
  ``treelite_checkpoint`` (``checkpoint.tl``: scikit-learn forests and boosted trees converted
  with ``treelite.sklearn.import_model(...).serialize(path)``). ``default_model_filename``
  overrides the file name. When ``model_type`` is unset, the first of those files present
  decides (Triton requires it).
* ``output_class`` (classifier, default false), ``predict_proba`` (class scores instead of
  the class, default false), ``threshold`` (binary decision threshold, default 0.5),
  ``xgboost_allow_unknown_field`` (Treelite loading of XGBoost JSON).
* GPU tuning passed to cuML FIL: ``storage_type`` (AUTO, DENSE, SPARSE, SPARSE8), ``algo``,
  ``threads_per_tree``, ``blocks_per_sm``; accepted and unused on the CPU.
* ``cpu_predictor`` (dagserve's own): ``auto`` (default: the framework's own predictor,
  XGBoost or LightGBM, when installed, else Treelite), ``native`` or ``treelite``.

Output semantics are Triton FIL's, all FP32: a regressor returns its prediction
(``dims: [1]``); a classifier returns the class index (``dims: [1]``; a binary one compares the
positive-class probability with ``threshold``); with ``predict_proba`` it returns one
probability per class (``dims: [n_classes]``; a binary classifier gives ``[1 - p, p]`` with
``dims: [2]`` or just ``p`` with ``dims: [1]``).

A ``KIND_GPU`` instance runs on cuML's FIL (``cuml.fil.ForestInference``) when RAPIDS cuML is
installed, taking GPU tensors from an earlier pipeline step without a host copy; without cuML
it warns and runs the CPU path, which gives the same results within float tolerance. The CPU
path copies device inputs to host. ``execute`` blocks in a worker thread (``mode =
"thread"``); XGBoost, LightGBM and Treelite release the GIL while they predict.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DagserveError, ModelExecutionError
from ..repository.config import ModelConfig
from ..types import DataType, InferRequest, is_device_tensor, to_host
from ._framework import execution_error, flag, integer, require
from .base import ExecuteMode, ModelContext, ModelFiles, Outputs, concat_requests, run_batch, split_outputs

__all__ = ["FILES", "FilModel", "load"]

log = logging.getLogger("dagserve.backends.fil")

MODEL_FILES = {
    "xgboost_json": "xgboost.json",
    "xgboost_ubj": "xgboost.ubj",
    "xgboost": "xgboost.model",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
_STORAGE_TYPES = ("AUTO", "DENSE", "SPARSE", "SPARSE8")
FILES = ModelFiles(names=tuple(MODEL_FILES.values()), frameworks=("xgboost", "lightgbm", "treelite"), extra="fil")

Predictor = Callable[[Any], Any]
"""Rows (n, features) -> scores: (n,) or (n, k) regression values or class probabilities."""


def load(context: ModelContext) -> FilModel:
    """Load a tree model for one instance: cuML FIL on a GPU instance when installed, else the
    CPU predictor.

    Raises:
        ConfigError: the framework for the model type is missing (install ``dagserve[fil]``), no
            model file, a bad parameter, or inputs/outputs that are not FIL's.
    """
    config = context.config
    owner = f"model '{context.name}' version {context.version}"
    params = config.parameters
    model_type, path = _model_file(config, context.version_dir, owner)
    output_class = flag(params, "output_class", False, owner)
    predict_proba = flag(params, "predict_proba", False, owner)
    if predict_proba and not output_class:
        raise ConfigError(f"{owner}: predict_proba needs output_class true (it gives class probabilities)")
    try:
        threshold = float(params.get("threshold", "0.5"))
    except ValueError:
        raise ConfigError(f"{owner}: parameter threshold must be a number, not {params['threshold']!r}") from None
    storage_type = params.get("storage_type", "AUTO").upper()
    if storage_type not in _STORAGE_TYPES:
        raise ConfigError(f"{owner}: storage_type must be one of {', '.join(_STORAGE_TYPES)}, not {storage_type!r}")
    _check_io(config, owner)
    n_features = config.input[0].dims[-1] if config.input[0].dims else -1
    predictor: Predictor | None = None
    if context.instance_kind == "GPU" or (context.instance_kind == "AUTO" and _has_cuml()):
        predictor = _cuml_predictor(context, model_type, path, output_class, threshold, storage_type, owner)
    on_gpu = predictor is not None
    if predictor is None:
        predictor = _cpu_predictor(model_type, path, params, n_features, owner)
    return FilModel(predictor, config, owner, on_gpu=on_gpu, output_class=output_class,
                    predict_proba=predict_proba, threshold=threshold)


def _model_file(config: ModelConfig, version_dir: Path, owner: str) -> tuple[str, Path]:
    model_type = config.parameters.get("model_type", "")
    if not model_type:
        found = [t for t, f in MODEL_FILES.items() if (version_dir / f).is_file()]
        if config.default_model_filename or not found:
            raise ConfigError(
                f"{owner}: set parameter model_type ({', '.join(MODEL_FILES)}); no file with a default "
                f"name ({', '.join(MODEL_FILES.values())}) is in {version_dir}"
            )
        model_type = found[0]
    if model_type not in MODEL_FILES:
        raise ConfigError(f"{owner}: model_type must be one of {', '.join(MODEL_FILES)}, not {model_type!r}")
    path = version_dir / (config.default_model_filename or MODEL_FILES[model_type])
    if not path.is_file():
        raise ConfigError(f"{owner}: model file {path} not found (model_type {model_type})")
    return model_type, path


def _check_io(config: ModelConfig, owner: str) -> None:
    if len(config.input) != 1 or len(config.output) != 1:
        raise ConfigError(
            f"{owner}: a FIL model has one input (input__0) and one output (output__0); the config declares "
            f"{len(config.input)} and {len(config.output)} (SHAP outputs are not supported)"
        )
    tensor = config.input[0]
    if tensor.data_type is not DataType.FP32:
        raise ConfigError(f"{owner}: input '{tensor.name}' must be TYPE_FP32 (FIL reads 32-bit features)")
    rank = 1 if config.batching else 2
    if len(tensor.dims) != rank:
        raise ConfigError(
            f"{owner}: input '{tensor.name}' dims must be "
            f"{'[n_features]' if config.batching else '[n_rows, n_features]'}, not {list(tensor.dims)}"
        )
    if config.output[0].data_type not in (DataType.FP32, DataType.FP64):
        raise ConfigError(f"{owner}: output '{config.output[0].name}' must be TYPE_FP32")


# -- predictors -------------------------------------------------------------------------------
def _cpu_predictor(model_type: str, path: Path, params: dict[str, str], n_features: int, owner: str) -> Predictor:
    choice = params.get("cpu_predictor", "auto").lower()
    if choice not in ("auto", "native", "treelite"):
        raise ConfigError(f"{owner}: cpu_predictor must be auto, native or treelite, not {choice!r}")
    native = {"lightgbm": "lightgbm"}.get(model_type, "xgboost" if model_type.startswith("xgboost") else "")
    if choice == "native" or (choice == "auto" and native and _installed(native)):
        if not native:
            raise ConfigError(f"{owner}: a treelite_checkpoint has no native predictor; use cpu_predictor treelite")
        if native == "xgboost":
            return _xgboost_predictor(path, n_features, owner)
        return _lightgbm_predictor(path, n_features, owner)
    return _treelite_predictor(model_type, path, params, n_features, owner)


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    return importlib.util.find_spec(module) is not None


def _xgboost_predictor(path: Path, n_features: int, owner: str) -> Predictor:
    xgb = require("xgboost", extra=FILES.extra, owner=owner, purpose="XGBoost models")
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - XGBoostError and friends
        raise ConfigError(f"{owner}: XGBoost cannot load {path}: {_last_line(exc)}") from None
    _check_features(booster.num_features(), n_features, owner)
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective == "multi:softmax":
        # multi:softmax predicts class labels; FIL needs the probabilities behind them.
        return lambda rows: _softmax(booster.inplace_predict(rows, predict_type="margin"))
    return lambda rows: booster.inplace_predict(rows)


def _lightgbm_predictor(path: Path, n_features: int, owner: str) -> Predictor:
    lgb = require("lightgbm", extra=FILES.extra, owner=owner, purpose="LightGBM models")
    try:
        booster = lgb.Booster(model_file=str(path))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{owner}: LightGBM cannot load {path}: {_last_line(exc)}") from None
    _check_features(booster.num_feature(), n_features, owner)
    return lambda rows: booster.predict(rows)


def _treelite_predictor(model_type: str, path: Path, params: dict[str, str], n_features: int, owner: str) -> Predictor:
    treelite = require("treelite", extra=FILES.extra, owner=owner, purpose=f"{model_type} models")
    gtil = importlib.import_module("treelite.gtil")
    frontend = treelite.frontend
    try:
        if model_type == "treelite_checkpoint":
            model = treelite.Model.deserialize(str(path))
        elif model_type == "lightgbm":
            model = frontend.load_lightgbm_model(str(path))
        elif model_type == "xgboost":
            model = frontend.load_xgboost_model_legacy_binary(str(path))
        else:
            model = frontend.load_xgboost_model(
                str(path),
                format_choice="json" if model_type == "xgboost_json" else "ubjson",
                allow_unknown_field=flag(params, "xgboost_allow_unknown_field", False, owner),
            )
    except DagserveError:
        raise
    except Exception as exc:  # noqa: BLE001 - TreeliteError and friends
        raise ConfigError(f"{owner}: Treelite cannot load {path}: {_last_line(exc)}") from None
    _check_features(model.num_feature, n_features, owner)
    nthread = integer(params, "cpu_nthread", -1, owner)

    def predict(rows: Any) -> Any:
        out = gtil.predict(model, rows, nthread=nthread)  # (n, targets, classes)
        if out.ndim == 3:
            n, targets, classes = out.shape
            out = out.reshape(n, classes) if targets == 1 else out.reshape(n, targets * classes)
        return out

    return predict


def _cuml_predictor(
    context: ModelContext, model_type: str, path: Path, output_class: bool, threshold: float,
    storage_type: str, owner: str,
) -> Predictor | None:
    try:
        fil = importlib.import_module("cuml.fil")
    except ImportError:
        log.warning("%s: KIND_GPU, but RAPIDS cuML is not installed: running FIL on the CPU", owner)
        return None
    forest = fil.ForestInference
    accepted = inspect.signature(forest.load).parameters
    params = context.config.parameters
    wanted: dict[str, Any] = {
        "model_type": model_type,
        "output_class": output_class,  # cuML < 25
        "is_classifier": output_class,  # cuML >= 25
        "threshold": threshold,
        "storage_type": storage_type.lower(),
        "algo": params.get("algo", "ALGO_AUTO").lower().removeprefix("algo_"),
        "threads_per_tree": integer(params, "threads_per_tree", 1, owner),
        "blocks_per_sm": integer(params, "blocks_per_sm", 0, owner),
        "device_id": context.device_id,
    }
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    try:
        model = forest.load(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{owner}: cuML FIL cannot load {path}: {_last_line(exc)}") from None
    if output_class:
        return lambda rows: model.predict_proba(rows)
    return lambda rows: model.predict(rows)


def _check_features(model_features: int, config_features: int, owner: str) -> None:
    if config_features > 0 and model_features != config_features:
        raise ConfigError(
            f"{owner}: the model reads {model_features} features, but input dims say {config_features}"
        )


def _softmax(margins: np.ndarray) -> np.ndarray:
    shifted = np.exp(margins - margins.max(axis=1, keepdims=True))
    result: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# -- execution --------------------------------------------------------------------------------
class FilModel:
    """One loaded tree model answering with Triton FIL's output semantics."""

    mode: ExecuteMode = "thread"

    def __init__(
        self, predictor: Predictor, config: ModelConfig, owner: str, *, on_gpu: bool, output_class: bool,
        predict_proba: bool, threshold: float,
    ) -> None:
        self._predict = predictor
        self._on_gpu = on_gpu  # cuML takes device arrays; the CPU predictors need host rows
        self._owner = owner
        self._batching = config.batching
        self._input = config.input[0].name
        self._output = config.output[0].name
        self._dims = config.output[0].dims
        self._dtype = config.output[0].data_type.numpy_dtype
        self._output_class = output_class
        self._predict_proba = predict_proba
        self._threshold = threshold

    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Predict a batch (one call over all rows for a batching model)."""
        return run_batch(requests, self._run, batching=self._batching)

    def _run(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        try:
            if self._batching:
                inputs, sizes = concat_requests(requests, [self._input])
            else:
                inputs, sizes = {self._input: requests[0].inputs[self._input]}, [1]
            rows = inputs[self._input]
            if not (self._on_gpu and is_device_tensor(rows)):
                rows = np.ascontiguousarray(to_host(rows), dtype=np.float32)
            scores = _host(self._predict(rows))
            output = self._shape(scores, rows.shape[0])
        except DagserveError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # noqa: BLE001 - the tree libraries raise their own errors
            return [execution_error(self._owner, "FIL", exc)] * len(requests)
        return list(split_outputs({self._output: output}, sizes))

    def _shape(self, scores: np.ndarray, n: int) -> np.ndarray:
        scores = scores.reshape(n, -1) if scores.size else scores.reshape(n, 0)
        if self._output_class:
            classes = scores.shape[1]
            if classes <= 2:
                positive = scores[:, -1]
                if self._predict_proba:
                    two = bool(self._dims) and self._dims[-1] == 2
                    result = np.stack([1 - positive, positive], axis=1) if two else positive[:, None]
                else:
                    result = (positive > self._threshold)[:, None]
            else:
                result = scores if self._predict_proba else np.argmax(scores, axis=1)[:, None]
        else:
            result = scores
        shape = (n, *self._dims) if self._batching else tuple(self._dims)
        try:
            return result.astype(self._dtype, copy=False).reshape(shape)
        except ValueError:
            raise ModelExecutionError(
                f"{self._owner}: the model gives {list(result.shape)} per batch, which does not fit output "
                f"'{self._output}' dims {list(self._dims)} (with predict_proba, dims is the number of classes)"
            ) from None

    def close(self) -> None:
        self._predict = _closed


def _closed(rows: Any) -> Any:
    raise ModelExecutionError("the model is closed")


def _host(scores: Any) -> np.ndarray:
    return to_host(scores) if not isinstance(scores, np.ndarray) else scores


def _has_cuml() -> bool:
    """Whether RAPIDS cuML is importable (KIND_AUTO then serves FIL on the GPU, as Triton)."""
    import importlib.util

    return importlib.util.find_spec("cuml") is not None
