"""The reviews pipeline, declared with dagserve's Python DSL (pipeline.py is the default
pipeline_file of a ``backend: pipeline`` config); inputs and outputs are declared here.

``split`` and ``score`` call models of the repository; ``summary`` is a plain Python function
declared right here, served as the model ``reviews.summary``.
"""

import numpy as np

from dagserve import Pipeline

pipeline = Pipeline()


@pipeline.function(inputs={"SCORES": ("FP32", [-1, 1])}, outputs={"LABEL": ("BYTES", [1]), "SCORE": ("FP32", [1])})
def summarize(SCORES):
    """Mean sentence score -> positive (> 0.25), negative (< -0.25), else mixed or neutral."""
    scores = SCORES[:, 0]
    mean = float(scores.mean()) if scores.size else 0.0
    if mean > 0.25:
        label = "positive"
    elif mean < -0.25:
        label = "negative"
    else:
        label = "mixed" if (scores > 0).any() and (scores < 0).any() else "neutral"
    return np.array([label.encode()], dtype=object), np.array([mean], dtype=np.float32)


text = pipeline.input("TEXT", "BYTES", [1])
split = pipeline.step("split", "split_sentences", inputs={"TEXT": text})
# One call per sentence (per element of SENTENCES' first dimension), gathered back in order.
score = pipeline.step("score", "sentiment", inputs={"SENTENCE": split["SENTENCES"]}, map_over=["SENTENCE"])
summary = pipeline.step("summary", summarize, inputs={"SCORES": score["SCORE"]})
pipeline.output("LABEL", summary["LABEL"], "BYTES", [1])
pipeline.output("SCORE", summary["SCORE"], "FP32", [1])
pipeline.output("SENTENCES", split["SENTENCES"])  # untyped: taken from split_sentences
pipeline.output("SENTENCE_SCORES", score["SCORE"])  # FP32 [-1, 1], one row per sentence
