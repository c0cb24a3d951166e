"""Robust z-scores (Iglewicz and Hoaglin): 0.6745 * (x - median) / MAD.

Median and median absolute deviation (MAD), unlike mean and standard deviation, are not
dragged along by the outlier being looked for, so one spike in a short window still stands
out; 0.6745 makes the score comparable to an ordinary z-score for normal data.
"""

import numpy as np


def infer(inputs):
    x = inputs["X"].astype(np.float64)
    if x.size == 0:
        raise ValueError("no readings")
    median = np.median(x)
    mad = max(float(np.median(np.abs(x - median))), 1e-6)  # a flat window: no division by zero
    z = 0.6745 * np.abs(x - median) / mad
    peak = int(np.argmax(z))
    return {
        "MEDIAN": np.array([median], dtype=np.float32),
        "ZMAX": np.array([z[peak]], dtype=np.float32),
        "PEAK": np.array([peak], dtype=np.int32),
    }
