"""A tiny lexicon sentiment model: (positive - negative words) / words with a polarity.

A negation ("not", "never", "n't") flips the next word that has a polarity.
"""

import re

import numpy as np

POSITIVE = {
    "amazing",
    "beautiful",
    "best",
    "excellent",
    "fast",
    "favorite",
    "gorgeous",
    "great",
    "happy",
    "love",
    "loved",
    "lovely",
    "nice",
    "perfect",
    "recommend",
    "reliable",
    "smooth",
    "solid",
    "good",
    "wonderful",
    "works",
}
NEGATIVE = {
    "awful",
    "bad",
    "broke",
    "broken",
    "confusing",
    "disappointed",
    "disappointing",
    "hate",
    "poor",
    "refund",
    "slow",
    "terrible",
    "ugly",
    "useless",
    "worst",
    "worse",
    "annoying",
    "flimsy",
}
NEGATIONS = {"not", "never", "no", "isn't", "wasn't", "don't", "doesn't", "didn't", "can't", "won't"}


def score(sentence: str) -> float:
    total, hits, negate = 0, 0, False
    for word in re.findall(r"[a-z']+", sentence.lower()):
        if word in NEGATIONS:
            negate = True
            continue
        polarity = (word in POSITIVE) - (word in NEGATIVE)
        if polarity:
            total += -polarity if negate else polarity
            hits += 1
            negate = False
    return total / hits if hits else 0.0


class Model:
    def infer(self, inputs):
        # A batching model: one row per sentence, from however many calls the batcher grouped.
        rows = [s.decode() if isinstance(s, bytes) else str(s) for s in inputs["SENTENCE"][:, 0]]
        return {"SCORE": np.array([[score(s)] for s in rows], dtype=np.float32).reshape(-1, 1)}
