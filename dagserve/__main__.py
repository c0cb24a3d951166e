"""``python -m dagserve``: the ``dagserve`` command (worker processes are started this way)."""

import sys

from .cli import main

sys.exit(main())
