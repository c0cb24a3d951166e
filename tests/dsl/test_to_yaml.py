"""A Python-DSL pipeline's graph, written as a YAML ``pipeline:`` section, reads back as the
same graph, and ``/v2/models/NAME/config`` shows it as a YAML pipeline's own."""

from __future__ import annotations

from pathlib import Path

import tritonclient.http as httpclient

from dagserve import GatherSpec, ModelConfig, Pipeline, loop
from dagserve.dsl.from_yaml import compile_yaml
from dagserve.dsl.to_yaml import pipeline_section
from dagserve.testing import serve_in_thread

EXAMPLES = Path(__file__).parent.parent.parent / "examples" / "pipelines"


def test_every_dsl_construct_round_trips_through_the_yaml_section() -> None:
    """Steps with version, when, map and gather, loop, a switch, a first-of join and one_of
    inputs come back equal."""
    p = Pipeline("everything", max_inflight_requests=4)
    raw = p.input("RAW", "FP32", [-1])
    p.input("A", "FP32", [-1], optional=True)
    p.input("B", "FP32", [-1], optional=True)
    p.one_of("A", "B")
    det = p.step("det", "detector", inputs={"X": raw}, version=2, when="params.mode != 'off'")
    with p.switch("det.KIND") as route:
        with route.case(b"cat"):
            p.step("cat", "cat_head", inputs={"X": det["EMB"]})
        with route.default():
            p.step("other", "other_head", inputs={"X": det["EMB"]})
    crops = p.step("crops", "crop_clf", inputs={"CROP": "det.CROPS"}, map_over=["CROP"], gather="concat")
    p.step("padded", "crop_clf", inputs={"CROP": "det.CROPS"}, map_over=["CROP"],
           gather=GatherSpec(mode="pad", value=0, counts="N"))
    p.step("refine", "denoiser", inputs={"X": crops["Y"]},
           loop=loop(8, carry={"X": "Y"}, until="refine.DONE == 1"))
    p.output("HEAD", ["cat.OUT", "other.OUT"], "FP32", [-1])
    p.output("CLEAN", "refine.Y")
    spec = p.build()

    section = pipeline_section(spec)
    assert section["max_inflight_requests"] == 4
    assert section["outputs"] == {"HEAD": ["cat.OUT", "other.OUT"], "CLEAN": "refine.Y"}
    assert section["one_of"] == [["A", "B"]]
    by_name = {s["name"]: s for s in section["steps"]}
    assert by_name["crops"]["gather"] == "concat"
    assert by_name["padded"]["gather"] == {"mode": "pad", "counts": "N", "value": 0}
    assert section["steps"][0] == {
        "name": "det", "model": "detector", "version": 2, "inputs": {"X": "RAW"}, "when": "params.mode != 'off'",
    }
    config = ModelConfig.model_validate({
        "name": "everything", "backend": "pipeline", "pipeline": section,
        "input": [{"name": "RAW", "data_type": "FP32", "dims": [-1]},
                  {"name": "A", "data_type": "FP32", "dims": [-1], "optional": True},
                  {"name": "B", "data_type": "FP32", "dims": [-1], "optional": True}],
        "output": [{"name": "HEAD", "data_type": "FP32", "dims": [-1]}],
    })
    again = compile_yaml(config)
    assert again.steps == spec.steps
    assert again.outputs == spec.outputs
    assert again.max_inflight_requests == spec.max_inflight_requests
    assert again.one_of == spec.one_of


def test_dsl_pipeline_config_shows_its_pipeline_like_a_yaml_one() -> None:
    """reviews (pipeline.py) answers /config with a pipeline section, as iris (config.yaml) does."""
    with serve_in_thread(EXAMPLES, grpc=False, metrics=False) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        yaml_form = client.get_model_config("iris")
        dsl_form = client.get_model_config("reviews")
    assert set(yaml_form["pipeline"]) == set(dsl_form["pipeline"]) == {"steps", "outputs"}
    assert dsl_form["pipeline"] == {
        "steps": [
            {"name": "split", "model": "split_sentences", "inputs": {"TEXT": "TEXT"}},
            {"name": "score", "model": "sentiment", "inputs": {"SENTENCE": "split.SENTENCES"}, "map": ["SENTENCE"]},
            {"name": "summary", "function": "pipeline:summarize", "inputs": {"SCORES": "score.SCORE"}},
        ],
        "outputs": {"LABEL": "summary.LABEL", "SCORE": "summary.SCORE", "SENTENCES": "split.SENTENCES",
                    "SENTENCE_SCORES": "score.SCORE"},
    }
