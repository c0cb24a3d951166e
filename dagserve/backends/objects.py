"""Native Python models made of objects already in memory (``Server.add_model``), for
embedding dagserve in a program and for tests: no model directory, no import.

The object takes one of the forms a native ``model.py`` defines, and is served exactly as
that file would be by :mod:`.python`:

* a class: each instance of the model is ``cls(context)`` (or ``cls()`` when it takes no
  argument), whose ``infer(inputs)`` answers;
* an object with an ``infer`` method, shared by every instance;
* an ``infer(inputs)`` function.

``infer`` takes and returns dicts of numpy arrays; ``async def`` and (decoupled) generators
work as in a file. The config parameter ``execution`` picks ``inline`` or ``thread`` as for a
file (``auto`` = ``thread``: a worker thread of the instance; ``inline``: the event loop); ``process`` is
refused, since an object in this process cannot be sent to a worker process.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

from ..errors import ConfigError
from .base import ExecuteMode, ModelContext, ModelFiles, ModelInstance
from .reshape import with_reshape

__all__ = ["ObjectBackend"]


class ObjectBackend:
    """The :class:`~.base.Backend` of one in-memory model object."""

    FILES = ModelFiles(names=())  # nothing on disk: the model is the object

    def __init__(self, model: Any) -> None:
        """Raises ConfigError: ``model`` is none of the forms above."""
        if inspect.isclass(model):
            self._module = SimpleNamespace(Model=model)
        elif callable(getattr(model, "infer", None)):
            self._module = SimpleNamespace(infer=model.infer)
        elif callable(model):
            self._module = SimpleNamespace(infer=model)
        else:
            raise ConfigError(
                f"an in-memory model must be a class, an object with an infer method, or an infer "
                f"function, not {type(model).__name__}"
            )

    def load(self, context: ModelContext) -> ModelInstance:
        """One instance of the model for ``context`` (blocking: runs the class's constructor).

        Raises:
            ConfigError: a bad ``execution`` parameter, or the object does not fit the config
                (e.g. a decoupled model whose infer is not a generator).
        """
        from .python import NativeModel  # the same adapter a model.py gets

        execution = context.config.parameters.get("execution", "auto")
        modes: dict[Any, ExecuteMode] = {"auto": "thread", "inline": "inline", "thread": "thread"}
        mode = modes.get(execution)
        if mode is None:
            raise ConfigError(
                f"model '{context.name}': parameter execution of an in-memory model must be 'auto', "
                f"'inline' or 'thread', not {execution!r}"
            )
        instance = NativeModel(self._module, context, mode)  # type: ignore[arg-type]
        return with_reshape(instance, context.config)
