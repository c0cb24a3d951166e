"""Yields each word with its index, from the last word to the first."""
import numpy as np


def infer(inputs):
    words = inputs["WORDS"]
    for i in reversed(range(len(words))):
        yield {"WORD": np.array([words[i]], dtype=object), "INDEX": np.array([i], np.int32)}
