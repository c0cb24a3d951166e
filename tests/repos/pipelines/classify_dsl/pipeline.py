"""classify_ensemble, written with dagserve's Python DSL."""
from dagserve import Pipeline

pipeline = Pipeline()
raw = pipeline.input("RAW", "UINT8", [-1])
pre = pipeline.step("preprocess", "preprocess", inputs={"RAW": raw})
clf = pipeline.step("classifier", "classifier", inputs={"FEATURES": pre["FEATURES"]})
post = pipeline.step("postprocess", "postprocess", inputs={"LOGITS": clf["LOGITS"]})
pipeline.output("LABEL", post["LABEL"], "BYTES", [1])
pipeline.output("SCORE", post["SCORE"], "FP32", [1])
