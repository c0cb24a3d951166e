"""Mean sentence score -> positive (> 0.25), negative (< -0.25), else mixed or neutral."""

import numpy as np


def infer(inputs):
    scores = inputs["SCORES"][:, 0]
    mean = float(scores.mean()) if scores.size else 0.0
    if mean > 0.25:
        label = "positive"
    elif mean < -0.25:
        label = "negative"
    else:
        label = "mixed" if (scores > 0).any() and (scores < 0).any() else "neutral"
    return {"LABEL": np.array([label.encode()], dtype=object), "SCORE": np.array([mean], dtype=np.float32)}
