"""What the framework backends (torch, onnx, tensorrt, fil) share: importing their framework on
demand with an install hint, reading Triton's string-valued ``parameters``, and turning a
framework's exception into the error a client sees.

Every framework backend calls :func:`require` inside ``load()``, never at import time, so
``import dagserve`` stays light and only the models that need a missing framework fail.
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Mapping
from types import ModuleType

from ..errors import ConfigError, ModelExecutionError
from ._imports import user_code_lock

__all__ = ["execution_error", "flag", "integer", "require"]

log = logging.getLogger("dagserve.backends")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def require(module: str, *, extra: str, owner: str, purpose: str = "") -> ModuleType:
    """Import ``module`` (e.g. ``"onnxruntime"``) for the model ``owner`` names.

    ``extra`` is dagserve's optional dependency group that installs it; ``purpose`` says what
    the model needs it for when that is not obvious.

    Raises:
        ConfigError: the package is not installed (or fails to import); the message names the
            model, the package and ``pip install 'dagserve[<extra>]'``.
    """
    try:
        with user_code_lock:  # models load in parallel threads; see _imports
            return importlib.import_module(module)
    except ImportError as exc:
        why = f" for {purpose}" if purpose else ""
        broken = "" if isinstance(exc, ModuleNotFoundError) else f" (importing it failed: {exc})"
        raise ConfigError(
            f"{owner}: needs the Python package '{module.split('.')[0]}'{why}, which is not "
            f"installed{broken}; install it with: pip install 'dagserve[{extra}]'"
        ) from None


def flag(parameters: Mapping[str, str], key: str, default: bool, owner: str) -> bool:
    """A boolean config parameter as Triton parses one (true/false, 1/0, yes/no, on/off).

    Raises:
        ConfigError: the value is none of those.
    """
    value = parameters.get(key)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{owner}: parameter {key} must be true or false, not {value!r}")


def integer(parameters: Mapping[str, str], key: str, default: int, owner: str) -> int:
    """An integer config parameter.

    Raises:
        ConfigError: the value is not an integer.
    """
    value = parameters.get(key)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{owner}: parameter {key} must be an integer, not {value!r}") from None


def execution_error(owner: str, framework: str, exc: BaseException) -> ModelExecutionError:
    """The client's view of ``framework`` failing to run a batch: the framework's own message
    (its last line: TorchScript and ONNX Runtime put the cause there, after their traceback),
    with an error id that finds the full traceback in the server log.
    """
    error_id = uuid.uuid4().hex[:12]
    log.error("%s: %s raised (error id %s)", owner, framework, error_id, exc_info=exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    summary = lines[-1][:500] if lines else type(exc).__name__
    return ModelExecutionError(f"{owner}: {framework} failed: {summary} (error id {error_id})")
