"""Standardize iris measurements: (x - mean) / std, with the statistics in stats.json."""

import json

import numpy as np


class Model:
    def __init__(self, context):
        stats = json.loads((context.version_dir / "stats.json").read_text())
        self.mean = np.asarray(stats["mean"], dtype=np.float32)
        self.std = np.asarray(stats["std"], dtype=np.float32)

    def infer(self, inputs):
        # A batching model: FEATURES is the whole batch, one flower per row.
        return {"SCALED": (inputs["FEATURES"] - self.mean) / self.std}
