"""PROBS -> LABEL (the winning class's name) and SCORE (its probability), per row."""

import numpy as np


class Model:
    def __init__(self, context):
        names = context.config.parameters["labels"].split(",")
        self.labels = np.array([n.encode() for n in names], dtype=object)

    def infer(self, inputs):
        probs = inputs["PROBS"]
        best = probs.argmax(axis=1)
        return {
            "LABEL": self.labels[best].reshape(-1, 1),
            "SCORE": probs[np.arange(len(probs)), best].reshape(-1, 1).astype(np.float32),
        }
