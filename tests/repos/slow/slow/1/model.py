"""Sleeps SLEEP_MS on the event loop (async), then answers DONE = 1."""
import anyio
import numpy as np


async def infer(inputs):
    await anyio.sleep(float(inputs["SLEEP_MS"].max()) / 1000)
    return {"DONE": np.ones_like(inputs["SLEEP_MS"])}
