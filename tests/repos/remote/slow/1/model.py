"""Sleeps SLEEP_MS on the event loop (async), then answers DONE = 1.

When the environment variable SLOW_MODEL_GATE names a directory (the ``slow_gate`` fixture of
tests/conftest.py), every call appends its SLEEP_MS to ``calls`` there; and SLEEP_MS = -1 holds
the call instead of sleeping: it creates ``started``, then waits until ``release`` exists."""
import os
from pathlib import Path

import anyio
import numpy as np


async def infer(inputs):
    ms = int(inputs["SLEEP_MS"].max())
    gate = Path(os.environ["SLOW_MODEL_GATE"]) if "SLOW_MODEL_GATE" in os.environ else None
    if gate is not None:
        with open(gate / "calls", "a") as calls:  # noqa: ASYNC230 - one short line, once a call
            calls.write(f"{ms}\n")
    if ms < 0:
        assert gate is not None, "SLEEP_MS = -1 needs SLOW_MODEL_GATE"
        (gate / "started").touch()
        while not (gate / "release").exists():
            await anyio.sleep(0.005)
    else:
        await anyio.sleep(ms / 1000)
    return {"DONE": np.ones_like(inputs["SLEEP_MS"])}
