"""Importing user code: the one importer of model and pipeline files, and its lock.

Every Python file of a repository (a python model's ``model.py``, a pytorch model's module, a
pipeline's ``pipeline_file``) is imported by :func:`import_file`, whether the server loads it,
the Python backend reads its ``auto_complete_config``, or ``dagserve validate`` checks it, so
they all see the file the same way:

* a fresh module under a unique name, never cached: a reload imports the file again;
* the file's directory on ``sys.path`` while it runs, so it can import helper modules beside
  it; those helpers are forgotten afterwards (removed from ``sys.modules``), so one model's
  ``utils.py`` is never what the next model's ``import utils`` finds;
* one import at a time. Models load in parallel worker threads. CPython guards each module
  with its own import lock and, when two threads import the modules of one package in
  different orders, breaks the would-be deadlock by handing one of them a partially
  initialized module: "ImportError: cannot import name 'clone' from partially initialized
  module 'sklearn.base'" (measured: 4 of 20 starts of a scikit-learn repository). Holding the
  re-entrant :data:`user_code_lock` while a file is executed and while its class is
  constructed (``initialize``, ``Model.__init__``: where lazy imports happen) makes those
  imports happen one at a time; ``sys.path`` and ``sys.modules`` are process-wide too. Model
  *execution* never takes it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

__all__ = ["forgetting_imports", "import_file", "user_code_lock"]

user_code_lock = threading.RLock()
"""Held while user code is imported or constructed (sys.path and sys.modules are global too)."""


def import_file(path: Path, label: str) -> ModuleType:
    """Execute the Python file ``path`` as a new module named ``_dagserve_<label>_<random>``
    and return it (see the module doc for what the file sees).

    Blocking; takes :data:`user_code_lock`.

    Raises:
        Exception: whatever the file raises while it runs (user code may raise anything).
    """
    spec = importlib.util.spec_from_file_location(f"_dagserve_{label}_{uuid.uuid4().hex[:8]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    with user_code_lock, forgetting_imports(path.parent):
        sys.path.insert(0, folder)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(folder)
    return module


@contextlib.contextmanager
def forgetting_imports(directory: Path) -> Iterator[None]:
    """Forget the modules imported from files under ``directory`` while inside: helper modules
    that sit beside a model's file would otherwise shadow the next model's helpers of that
    name. ``sys.modules`` is global: what another thread imports meanwhile from under
    ``directory`` is forgotten too."""
    before = set(sys.modules)
    # String prefixes, the path as given and resolved: a first import of a framework brings
    # in thousands of modules, too many to resolve each.
    roots = tuple({str(directory) + "/", str(directory.resolve()) + "/"})
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            file = getattr(sys.modules.get(name), "__file__", None)
            if file and file.startswith(roots):
                del sys.modules[name]
