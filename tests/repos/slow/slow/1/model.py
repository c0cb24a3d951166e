"""Sleeps SLEEP_MS on the event loop (async), then answers DONE = 1.

With SLEEP_MS = -1 it holds instead, until the test releases it: it creates ``started`` in the
directory named by the environment variable SLOW_MODEL_GATE, then waits for ``release`` there
(the ``slow_gate`` fixture of tests/conftest.py)."""
import os
from pathlib import Path

import anyio
import numpy as np


async def infer(inputs):
    ms = int(inputs["SLEEP_MS"].max())
    if ms < 0:
        gate = Path(os.environ["SLOW_MODEL_GATE"])
        (gate / "started").touch()
        while not (gate / "release").exists():
            await anyio.sleep(0.005)
    else:
        await anyio.sleep(ms / 1000)
    return {"DONE": np.ones_like(inputs["SLEEP_MS"])}
