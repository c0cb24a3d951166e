"""Degrees Fahrenheit -> degrees Celsius."""

import numpy as np


def infer(inputs):
    return {"C": ((inputs["F"] - 32.0) * (5.0 / 9.0)).astype(np.float32)}
