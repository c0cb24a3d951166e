import numpy as np


def infer(inputs):
    return {"Y": np.zeros(int(inputs["N"][0]), dtype=np.float32)}
