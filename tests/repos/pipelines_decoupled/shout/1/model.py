"""WORD -> LOUD, upper case; raises on b'boom'."""
import numpy as np


def infer(inputs):
    word = inputs["WORD"][0]
    if word == b"boom":
        raise ValueError("cannot shout boom")
    return {"LOUD": np.array([word.upper()], dtype=object)}
