"""Backends: one module per kind of model, each behind the protocol in :mod:`.base`.

Framework backends (torch, onnxruntime, tensorrt, fil) are imported only when a model asks for
them, and each imports its framework only inside ``load()``, so a server of Python models never
imports a framework and a missing framework fails only the models that need it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, DagserveError
from ..repository.config import ModelConfig
from .base import Backend, ModelContext, ModelFiles, ModelInstance
from .reshape import with_reshape

__all__ = ["RUNTIME_BACKENDS", "Backend", "ModelContext", "ModelInstance", "backend_names", "complete_config", "get_backend"]

log = logging.getLogger("dagserve.backends")

_MODULES = {
    "python": "dagserve.backends.python",
    "pytorch": "dagserve.backends.torch",  # platform pytorch_libtorch
    "onnxruntime": "dagserve.backends.onnx",  # platform onnxruntime_onnx
    "tensorrt": "dagserve.backends.tensorrt",  # platform tensorrt_plan
    "fil": "dagserve.backends.fil",
    "sklearn": "dagserve.backends.sklearn",  # a joblib / pickle file of a fitted estimator
    "remote": "dagserve.backends.remote",  # another KServe v2 server
}

RUNTIME_BACKENDS = frozenset({"pytorch", "onnxruntime", "tensorrt", "fil"})
"""Backends that run a model in a native framework runtime with its own thread pools (libtorch,
ONNX Runtime, TensorRT, XGBoost / LightGBM / Treelite): each such runtime sizes its intra-op
pool to the machine's cores and holds its weights (and GPU context) per process, so ``--workers
N`` loads them once by default (placement ``one``, :func:`dagserve.engine.peers.placement`).
Not ``python``, ``sklearn`` (small estimators whose ``predict`` is mostly Python and numpy
calls holding the GIL: only more processes spread it over the cores) or ``remote`` (a
client)."""

_RESHAPES_ITSELF = {"onnxruntime", "remote"}  # remote: the remote server reshapes
"""Backends that apply the config's ``reshape`` themselves (and check it against the model)."""


def backend_names() -> frozenset[str]:
    """Every name a config's ``backend`` may give: the backends here, and the pipeline kinds
    (``ensemble``, ``pipeline``) that the engine runs itself."""
    return frozenset((*_MODULES, "ensemble", "pipeline"))


def get_backend(name: str) -> Backend:
    """The backend module for a config's backend name; its instances see each tensor's
    ``reshape`` dims (see :mod:`.reshape`) while clients keep the config dims.

    Raises:
        ConfigError: no backend of that name.
    """
    module = _MODULES.get(name)
    if module is None:
        from ..repository.locations import did_you_mean

        known = ", ".join(sorted(_MODULES))
        raise ConfigError(f"unknown backend {name!r}{did_you_mean(name, _MODULES)} (dagserve has: {known})")
    backend: Backend = importlib.import_module(module)  # type: ignore[assignment]
    return backend if name in _RESHAPES_ITSELF else _Reshaping(backend)


class _Reshaping:
    """A backend module whose ``load`` wraps each instance with :func:`with_reshape`."""

    def __init__(self, module: Backend) -> None:
        self._module = module

    @property
    def FILES(self) -> ModelFiles:
        return self._module.FILES

    def load(self, context: ModelContext) -> ModelInstance:
        return with_reshape(self._module.load(context), context.config)

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


def complete_config(config: ModelConfig, model_dir: Path, versions: Sequence[int]) -> ModelConfig:
    """``config`` with what its backend can read from the model file filled in (Triton's
    auto-complete), from the newest served version; ``config`` itself when the backend has no
    ``complete_config`` hook or there is no version.

    Blocking (it may open the model): call it from a worker thread. When the model cannot be
    read, the config is returned as is and the backend's ``load()``, which checks the same
    things, reports why the model cannot load.

    Raises:
        DagserveError: a Python model's ``auto_complete_config`` failed (Triton fails the
            model's load then).
    """
    module_name = _MODULES.get(config.backend_name)
    if module_name is None or not versions:
        return config
    hook = getattr(importlib.import_module(module_name), "complete_config", None)
    if hook is None:
        return config
    try:
        completed: ModelConfig = hook(config, model_dir / str(max(versions)))
    except DagserveError as exc:
        if config.backend_name == "python":
            raise  # the model's own auto_complete_config failed: the model fails, as on Triton
        log.debug("model '%s': config auto-complete skipped: %s", config.name, exc)
        return config
    except Exception:  # a broken model file must not stop the other models
        log.warning("model '%s': config auto-complete failed", config.name, exc_info=True)
        return config
    return completed
