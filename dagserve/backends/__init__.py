"""Backends: one module per kind of model, each behind the protocol in :mod:`.base`.

Framework backends (torch, onnxruntime, tensorrt, fil) are imported only when a model asks for
them, so a server of Python models never imports a framework.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Backend, ModelContext, ModelInstance

__all__ = ["Backend", "ModelContext", "ModelInstance", "get_backend"]

_MODULES = {
    "python": "dagserve.backends.python",
}


def get_backend(name: str) -> Backend:
    """The backend module for a config's backend name.

    Raises:
        ConfigError: no backend of that name.
    """
    module = _MODULES.get(name)
    if module is None:
        known = ", ".join(sorted(_MODULES))
        raise ConfigError(f"unknown backend {name!r} (dagserve has: {known})")
    return importlib.import_module(module)  # type: ignore[return-value]
