"""One lock for running user code that imports: model modules and their construction.

Models load in parallel worker threads. CPython guards each module with its own import lock
and, when two threads import the modules of one package in different orders, breaks the
would-be deadlock by handing one of them a partially initialized module: "ImportError: cannot
import name 'clone' from partially initialized module 'sklearn.base'". Holding this re-entrant
lock while a model's file is executed and while its class is constructed (``initialize``,
``Model.__init__``: where lazy imports happen) makes those imports happen one at a time.
Model *execution* never takes it.
"""

from __future__ import annotations

import threading

__all__ = ["user_code_lock"]

user_code_lock = threading.RLock()
"""Held while user code is imported or constructed (sys.path and sys.modules are global too)."""
