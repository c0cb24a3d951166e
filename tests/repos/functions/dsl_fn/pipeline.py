"""A DSL pipeline with a function step that refuses negative inputs."""

import numpy as np

from dagserve import Pipeline

pipeline = Pipeline(max_batch_size=8)


@pipeline.function(inputs={"x": ("FP32", [2])}, outputs={"checked": ("FP32", [2]), "count": ("INT64", [1])},
                   max_batch_size=8, execution="inline")
def check(x):
    if (x < 0).any():
        raise ValueError(f"negative input: {x.min()}")
    return {"checked": x, "count": [[len(row)] for row in x]}


x = pipeline.input("X", "FP32", [2])
checked = pipeline.step("check", check, inputs={"x": x})
doubled = pipeline.step("double", "double", inputs={"X": checked["checked"]})
pipeline.output("Y", doubled["Y"])
pipeline.output("COUNT", checked["count"])
