"""The three ways to write a pipeline compile to one frozen spec, equal across forms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dagserve import (
    ConfigError,
    GatherSpec,
    ModelConfig,
    Pipeline,
    PipelineSpec,
    StepSpec,
    TensorRef,
    pipeline,
)
from dagserve.dsl import compile_config
from dagserve.dsl.conditions import Condition, Op, Param
from dagserve.dsl.spec import FirstOf, FrozenMap, LoopSpec, parse_source
from dagserve.repository.loader import read_model

REPO = Path(__file__).parent.parent / "repos" / "pipelines"


def compiled(name: str) -> PipelineSpec:
    source = read_model(REPO / name)
    assert source.config is not None, source.error
    return compile_config(source.config, model_dir=source.path, config_path=source.config_path)


def test_ensemble_yaml_and_dsl_forms_compile_to_equal_specs() -> None:
    """classify_ensemble (pbtxt), classify_yaml and classify_dsl (pipeline.py) are one pipeline."""
    ensemble, yaml_form, dsl_form = (
        dataclasses.replace(compiled(n), name="classify")
        for n in ("classify_ensemble", "classify_yaml", "classify_dsl")
    )
    assert ensemble == yaml_form == dsl_form
    assert hash(ensemble) == hash(yaml_form) == hash(dsl_form)


def test_builder_and_decorator_equal_the_yaml_form() -> None:
    """The builder used inline and the @pipeline decorator build the same spec as the YAML."""

    @pipeline("classify_yaml")
    def classify(p: Pipeline) -> None:
        raw = p.input("RAW", "UINT8", [-1])
        pre = p.step("preprocess", "preprocess", inputs={"RAW": raw})
        clf = p.step("classifier", "classifier", inputs={"FEATURES": "preprocess.FEATURES"})
        post = p.step("postprocess", "postprocess", inputs={"LOGITS": clf["LOGITS"]})
        p.output("LABEL", post["LABEL"], "BYTES", [1])
        p.output("SCORE", "postprocess.SCORE", "FP32", [1])
        assert pre["FEATURES"] == TensorRef(step="preprocess", name="FEATURES")

    assert classify == compiled("classify_yaml")


def test_ensemble_tensors_resolve_to_their_producers() -> None:
    """Ensemble tensor names disappear: each step input names the step output it reads."""
    spec = compiled("classify_ensemble")
    assert [s.name for s in spec.steps] == ["preprocess", "classifier", "postprocess"]
    assert spec.step("classifier").inputs == {"FEATURES": TensorRef(step="preprocess", name="FEATURES")}
    assert spec.step("preprocess").inputs == {"RAW": TensorRef(name="RAW")}
    assert spec.outputs[0].source == TensorRef(step="postprocess", name="LABEL")


def test_repeated_models_get_numbered_step_names() -> None:
    """A model used twice in an ensemble gives steps 'bscale' and 'bscale_2'."""
    spec = compiled("batched_ensemble")
    assert [s.name for s in spec.steps] == ["bscale", "bscale_2"]
    assert spec.step("bscale_2").inputs == {"X": TensorRef(step="bscale", name="Y")}
    assert spec.max_batch_size == 4


def test_yaml_switch_desugars_to_conditions_and_first_of() -> None:
    """A switch puts '==' on each case's steps and 'not in' on the default's; a list source is FirstOf."""
    spec = compiled("routed")
    mode = Param(name="mode")
    assert spec.step("double").when == Condition(subject=mode, op=Op.EQ, value="double")
    assert spec.step("triple").when == Condition(subject=mode, op=Op.NOT_IN, value=("double",))
    assert spec.step("flag").when == Condition(subject=TensorRef(name="X"), op=Op.GT, value=100)
    y = next(o for o in spec.outputs if o.name == "Y")
    assert y.source == FirstOf(refs=(TensorRef(step="double", name="Y"), TensorRef(step="triple", name="Y")))


def test_dsl_switch_equals_yaml_switch() -> None:
    """Switch context managers in the DSL build the same conditions as a YAML switch."""
    p = Pipeline("routed")
    p.input("X", "FP32", [-1])
    with p.switch("params.mode") as route:
        with route.case("double"):
            p.step("double", "double", inputs={"X": "X"})
        with route.default():
            p.step("triple", "triple", inputs={"X": "X"})
    p.step("flag", "checker", inputs={"X": ["double.Y", "triple.Y"]}, when="X > 100")
    p.output("Y", ["double.Y", "triple.Y"], "FP32", [-1])
    p.output("BIG", "flag.Y", "FP32", [-1], optional=True)
    assert p.build() == compiled("routed")


def test_map_and_loop_compile_from_yaml() -> None:
    """map: and loop: become map_over and a LoopSpec; an output without a type is left to infer."""
    mapped = compiled("mapped")
    assert mapped.step("sums").map_over == ("P",)
    rows = next(o for o in mapped.outputs if o.name == "ROWS")
    assert rows.datatype is None and rows.shape is None
    looped = compiled("looped").step("count")
    assert looped.loop == LoopSpec(
        max_iterations=10,
        carry={"X": "Y"},
        until=Condition(subject=TensorRef(step="count", name="Y"), op=Op.GE, value=5),
    )


def test_specs_are_frozen_and_print_readably() -> None:
    """Specs cannot be changed and their repr reads like the YAML."""
    spec = compiled("classify_yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.steps[0].inputs["RAW"] = TensorRef(name="X")  # type: ignore[index]
    text = repr(spec.step("classifier"))
    assert (
        text == "StepSpec(name='classifier', model='classifier', inputs={'FEATURES': 'preprocess.FEATURES'})"
    )
    assert "OutputSpec('LABEL' <- 'postprocess.LABEL', BYTES [1])" in repr(spec)


def test_origin_does_not_affect_equality() -> None:
    """Where a step was declared is kept for messages but ignored by ==."""
    a = StepSpec(name="s", model="m", inputs={"X": TensorRef(name="X")}, origin="a.yaml:3")
    b = StepSpec(name="s", model="m", inputs=FrozenMap({"X": TensorRef(name="X")}), origin="b.py:9")
    assert a == b and a.origin != b.origin


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("RAW", TensorRef(name="RAW")),
        ("pre.FEATURES", TensorRef(step="pre", name="FEATURES")),
        ("input.1", TensorRef(name="input.1")),  # a declared input with a dot stays an input
        ("pre.out.1", TensorRef(step="pre", name="out.1")),
        (["a.Y", "b.Y"], FirstOf(refs=(TensorRef(step="a", name="Y"), TensorRef(step="b", name="Y")))),
    ],
)
def test_sources_parse(text: object, expected: object) -> None:
    """References read as in YAML: inputs by name, step outputs as step.OUTPUT, lists as FirstOf."""
    assert parse_source(text, inputs=("RAW", "input.1")) == expected


def test_builder_rejects_duplicate_steps_naming_the_line() -> None:
    """Declaring a step twice is a ConfigError that points at the declaring line."""
    p = Pipeline("dup")
    p.input("X", "FP32", [1])
    p.step("a", "m", inputs={"X": "X"})
    p.step("a", "m", inputs={"X": "X"})
    with pytest.raises(ConfigError, match=r"test_spec\.py:\d+: step 'a' is declared twice"):
        p.build()


def test_pipeline_file_named_in_the_config() -> None:
    """pipeline_file names the Python file explicitly; the file, not the config, declares tensors."""
    config = ModelConfig(name="classify_dsl", backend="pipeline", pipeline_file="pipeline.py")
    spec = compile_config(config, model_dir=REPO / "classify_dsl")
    assert spec == compiled("classify_dsl")
    typed = ModelConfig.model_validate(
        {
            "name": "classify_dsl",
            "backend": "pipeline",
            "pipeline_file": "pipeline.py",
            "inputs": [{"name": "RAW", "datatype": "UINT8", "shape": [-1]}],
        }
    )
    with pytest.raises(ConfigError, match="declares its inputs and outputs there"):
        compile_config(typed, model_dir=REPO / "classify_dsl")


def test_gather_and_one_of_compile_equal_from_yaml_and_dsl() -> None:
    """gather (concat with counts, pad with a value and named counts) and one_of give the same
    spec from YAML and from the Python DSL."""
    yaml_form, dsl_form = compiled("gathered"), compiled("gathered_dsl")
    assert dataclasses.replace(dsl_form, name="gathered") == yaml_form
    assert yaml_form.step("flat").gather == GatherSpec(mode="concat", counts="COUNTS")
    assert yaml_form.step("padded").gather == GatherSpec(mode="pad", value=-1, counts="ROWS")
    assert "gather='pad (value -1, counts ROWS)'" in repr(yaml_form.step("padded"))

    p = Pipeline("one_of")
    twice = p.input("TWICE", "FP32", [-1], optional=True)
    p.input("THRICE", "FP32", [-1], optional=True)
    p.one_of(twice, "THRICE")
    p.step("two", "double", inputs={"X": twice})
    p.step("three", "triple", inputs={"X": "THRICE"})
    p.output("Y", ["two.Y", "three.Y"], "FP32", [-1], optional=True)
    assert p.build() == compiled("one_of")


@pytest.mark.parametrize(
    ("gather", "message"),
    [
        ({"mode": "pad"}, "gather 'pad' needs the value to pad with"),
        ({"mode": "zip"}, "gather mode must be one of stack, concat, pad, not 'zip'"),
        ({"mode": "stack", "counts": "N"}, "gather 'stack' has no counts output"),
        ({"mode": "concat", "value": 0}, "gather 'concat' takes no value"),
    ],
)
def test_bad_gather_is_refused_in_yaml(gather: dict[str, object], message: str) -> None:
    """A gather the spec cannot take is a ConfigError naming the YAML field."""
    config = ModelConfig.model_validate({
        "name": "g", "backend": "pipeline", "inputs": [{"name": "NS", "datatype": "INT32", "shape": [-1, 1]}],
        "pipeline": {"steps": [{"name": "s", "model": "crops", "inputs": {"N": "NS"}, "map": "N", "gather": gather}],
                     "outputs": {"B": "s.BOXES"}},
    })
    with pytest.raises(ConfigError, match=r"field 'pipeline\.steps\[0\]\.gather'") as caught:
        compile_config(config, model_dir=Path("g"))
    assert message in str(caught.value)


def test_bad_gather_in_the_dsl_names_the_line() -> None:
    """In the DSL, a gather mode that does not exist, or gather without map_over, is a
    ConfigError at the step() call's line."""
    p = Pipeline("g")
    with pytest.raises(ConfigError, match=r"test_spec\.py:\d+: step 's': gather 'pad' needs the value"):
        p.step("s", "crops", inputs={"N": "NS"}, map_over=["N"], gather="pad")
    with pytest.raises(ConfigError, match=r"test_spec\.py:\d+: step 's': gather is for a step that maps"):
        p.step("s", "crops", inputs={"N": "NS"}, gather="concat")


def test_graph_shows_the_gather_mode() -> None:
    """`dagserve graph` labels a mapped step with its gather mode when it is not the default."""
    from dagserve.drawing import pipeline_graph, to_mermaid

    text = to_mermaid(pipeline_graph(compiled("gathered")))
    assert "map over N, gather concat (counts COUNTS)" in text
    assert "map over N, gather pad (value -1, counts ROWS)" in text
    assert "gather" not in to_mermaid(pipeline_graph(compiled("mapped")))
