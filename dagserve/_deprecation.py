"""Old public names kept working for a while: a module's ``__getattr__`` that answers them
with a DeprecationWarning naming the new one."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["renamed"]


def renamed(module: str, old_to_new: Mapping[str, Any]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module`` that returns ``old_to_new[name]`` with a
    DeprecationWarning, and raises AttributeError for any other missing name."""

    def __getattr__(name: str) -> Any:
        new = old_to_new.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} is deprecated; use {module}.{new.__name__}", DeprecationWarning, stacklevel=2)
        return new

    return __getattr__
