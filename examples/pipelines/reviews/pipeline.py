"""The reviews pipeline, declared with dagserve's Python DSL (pipeline.py is the default
pipeline_file of a ``backend: pipeline`` config); inputs and outputs are declared here."""

from dagserve import Pipeline

pipeline = Pipeline()
text = pipeline.input("TEXT", "BYTES", [1])
split = pipeline.step("split", "split_sentences", inputs={"TEXT": text})
# One call per sentence (per element of SENTENCES' first dimension), gathered back in order.
score = pipeline.step("score", "sentiment", inputs={"SENTENCE": split["SENTENCES"]}, map_over=["SENTENCE"])
summary = pipeline.step("summary", "sentiment_summary", inputs={"SCORES": score["SCORE"]})
pipeline.output("LABEL", summary["LABEL"], "BYTES", [1])
pipeline.output("SCORE", summary["SCORE"], "FP32", [1])
pipeline.output("SENTENCES", split["SENTENCES"])  # untyped: taken from split_sentences
pipeline.output("SENTENCE_SCORES", score["SCORE"])  # FP32 [-1, 1], one row per sentence
