"""total: the sum of each row, a module in a sub-directory (lib.more)."""

import numpy as np

import dagserve


@dagserve.function(inputs={"values": ("FP32", [2])}, outputs={"total": (np.float32, [1])}, max_batch_size=8)
def total(values):
    return values.sum(axis=1, keepdims=True)
