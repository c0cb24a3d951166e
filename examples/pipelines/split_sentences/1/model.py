"""Split a text after '.', '!' or '?' followed by white space."""

import re

import numpy as np


def infer(inputs):
    text = inputs["TEXT"][0]
    text = text.decode() if isinstance(text, bytes) else str(text)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    return {"SENTENCES": np.array([s.encode() for s in sentences], dtype=object).reshape(-1, 1)}
