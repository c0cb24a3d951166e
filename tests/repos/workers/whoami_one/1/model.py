import os

import numpy as np


class Model:
    def __init__(self, context):
        pass

    def infer(self, inputs):
        return {"Y": inputs["X"] + 1, "PID": np.array([os.getpid()], dtype=np.int64)}
