"""The graph of the YAML pipeline 'gathered', with the Python DSL."""

from dagserve import GatherSpec, Pipeline

pipeline = Pipeline()
ns = pipeline.input("NS", "INT32", [-1, 1])
flat = pipeline.step("flat", "crops", inputs={"N": ns}, map_over=["N"], gather="concat")
padded = pipeline.step(
    "padded", "crops", inputs={"N": ns}, map_over=["N"], gather=GatherSpec(mode="pad", value=-1, counts="ROWS")
)
labels = pipeline.step("labels", "crops", inputs={"N": ns}, map_over=["N"], gather=GatherSpec(mode="pad", value=""))
pipeline.output("BOXES", flat["BOXES"])
pipeline.output("LABELS", flat["LABELS"])
pipeline.output("COUNTS", flat["COUNTS"])
pipeline.output("PADDED", padded["BOXES"])
pipeline.output("ROWS", padded["ROWS"])
pipeline.output("PADDED_LABELS", labels["LABELS"])
