"""Class probabilities of a linear model: softmax(SCALED @ weights + bias)."""

import json

import numpy as np


class Model:
    def __init__(self, context):
        params = json.loads((context.version_dir / "weights.json").read_text())
        self.weights = np.asarray(params["weights"], dtype=np.float32)  # (features, classes)
        self.bias = np.asarray(params["bias"], dtype=np.float32)

    def infer(self, inputs):
        logits = inputs["SCALED"] @ self.weights + self.bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))  # shifted: no overflow
        return {"PROBS": (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)}
