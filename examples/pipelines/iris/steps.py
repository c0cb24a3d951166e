"""The iris pipeline's pre- and post-processing, as plain Python functions.

Each function is a step of its own (served as model ``iris.standardize`` / ``iris.label``,
with its own dynamic batcher and statistics); config.yaml names them ``steps:standardize`` and
``steps:label``. The decorator declares the tensors; numpy annotations give their datatypes.
"""

import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import dagserve

STATS = json.loads((Path(__file__).parent / "stats.json").read_text())
MEAN = np.asarray(STATS["mean"], dtype=np.float32)
STD = np.asarray(STATS["std"], dtype=np.float32)
LABELS = np.array([b"setosa", b"versicolor", b"virginica"], dtype=object)


@dagserve.function(inputs={"FEATURES": [4]}, outputs={"SCALED": [4]},
                   max_batch_size=64, max_queue_delay_microseconds=1000)
def standardize(FEATURES: NDArray[np.float32]) -> NDArray[np.float32]:
    """z-score each measurement (a whole batch at once: one flower per row)."""
    return (FEATURES - MEAN) / STD


@dagserve.function(inputs={"PROBS": [3]}, outputs={"LABEL": ("BYTES", [1]), "SCORE": [1]},
                   max_batch_size=64, max_queue_delay_microseconds=1000)
def label(PROBS: NDArray[np.float32]) -> tuple[NDArray[np.object_], NDArray[np.float32]]:
    """The most probable class's name and its probability, per row."""
    best = PROBS.argmax(axis=1)
    return LABELS[best].reshape(-1, 1), PROBS[np.arange(len(PROBS)), best].reshape(-1, 1)
