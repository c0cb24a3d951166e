"""TEXT -> its words, and how many there are."""
import numpy as np


def infer(inputs):
    words = inputs["TEXT"][0].split()
    return {"WORDS": np.array(words, dtype=object), "COUNT": np.array([len(words)], np.int32)}
