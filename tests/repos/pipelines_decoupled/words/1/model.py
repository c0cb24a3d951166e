"""Yields each word with its index; the word 'slow' takes 30 s (for cancellation tests)."""
import anyio
import numpy as np


async def infer(inputs):
    for i, word in enumerate(inputs["WORDS"]):
        if word == b"slow":
            await anyio.sleep(30)
        yield {"WORD": np.array([word], dtype=object), "INDEX": np.array([i], np.int32)}
