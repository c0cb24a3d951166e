import numpy as np


async def infer(inputs):
    p = inputs["P"]
    return {"S": p.sum(axis=1, keepdims=True), "ROWS": np.full((len(p), 1), len(p), dtype=np.int32)}
