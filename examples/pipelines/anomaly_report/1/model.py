"""Describe the outlier found by robust_zscore, in words."""

import numpy as np


def infer(inputs):
    peak = int(inputs["PEAK"][0])
    value, median, z = float(inputs["X"][peak]), float(inputs["MEDIAN"][0]), float(inputs["ZMAX"][0])
    text = (
        f"reading {peak} ({value:.1f} C) is an outlier: robust z-score {z:.1f}, window median {median:.1f} C"
    )
    return {"REPORT": np.array([text.encode()], dtype=object)}
