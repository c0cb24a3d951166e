"""Load-time checks: each mistake is rejected with the step and tensor named (no server needed)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dagserve import ConfigError, ModelConfig, ModelNotFoundError, Pipeline, PipelineSpec, loop
from dagserve.dsl import check_pipeline
from dagserve.dsl.typecheck import Adapt, TensorType, adapt
from dagserve.types import DataType


def model(
    name: str, inputs: dict[str, Any], outputs: dict[str, Any], max_batch_size: int = 0, **more: Any
) -> ModelConfig:
    """A member config; tensors are {name: (datatype, shape)} or (datatype, shape, optional)."""

    def tensors(specs: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"name": n, "datatype": t[0], "shape": list(t[1]), "optional": len(t) > 2 and t[2]}
            for n, t in specs.items()
        ]

    return ModelConfig.model_validate(
        {
            "name": name,
            "backend": "python",
            "max_batch_size": max_batch_size,
            "inputs": tensors(inputs),
            "outputs": tensors(outputs),
            **more,
        }
    )


MEMBERS = {
    "pre": model("pre", {"RAW": ("UINT8", [-1])}, {"FEATURES": ("FP32", [16])}),
    "clf": model("clf", {"FEATURES": ("FP32", [16])}, {"LOGITS": ("FP32", [4])}, max_batch_size=8),
    "post": model("post", {"LOGITS": ("FP32", [4])}, {"LABEL": ("BYTES", [1]), "SCORE": ("FP32", [1])}),
    "half": model("half", {"FEATURES": ("FP16", [16])}, {"LOGITS": ("FP32", [4])}, max_batch_size=8),
    "two": model("two", {"A": ("FP32", [-1]), "B": ("FP32", [-1], True)}, {"Y": ("FP32", [-1])}),
}


def lookup(name: str, version: int) -> ModelConfig:
    if name not in MEMBERS:
        raise ModelNotFoundError(f"unknown model '{name}'")
    return MEMBERS[name]


def classify(**changes: Any) -> Pipeline:
    """The good pre -> clf -> post pipeline; ``changes`` override step inputs by step name."""
    p = Pipeline("classify")
    p.input("RAW", "UINT8", [-1])
    p.step("pre", "pre", inputs=changes.get("pre", {"RAW": "RAW"}))
    p.step("clf", changes.get("clf_model", "clf"), inputs=changes.get("clf", {"FEATURES": "pre.FEATURES"}))
    p.step("post", "post", inputs=changes.get("post", {"LOGITS": "clf.LOGITS"}))
    p.output("LABEL", "post.LABEL", "BYTES", [1])
    return p


def rejected(spec: PipelineSpec | Pipeline) -> str:
    built = spec.build() if isinstance(spec, Pipeline) else spec
    with pytest.raises(ConfigError) as info:
        check_pipeline(built, lookup)
    return str(info.value)


def test_good_pipeline_passes_with_types_and_order() -> None:
    """A well-formed pipeline gets a topological order and every tensor's type."""
    checked = check_pipeline(classify().build(), lookup)
    assert checked.order == ("pre", "clf", "post")
    assert not checked.may_skip and not checked.may_be_missing


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"clf_model": "nope"}, "step 'clf': unknown model 'nope'"),
        (
            {"clf": {"FEATURE": "pre.FEATURES"}},
            "step 'clf': model 'clf' has no input 'FEATURE' (did you mean 'FEATURES'?) (its inputs: FEATURES)",
        ),
        ({"clf": {"FEATURES": "pre.FEATURES", "EXTRA": "RAW"}}, "model 'clf' has no input 'EXTRA'"),
        ({"post": {}}, "step 'post': input 'LOGITS' of model 'post' is not mapped to any tensor"),
        (
            {"clf": {"FEATURES": "pre.FEAT"}},
            "reads 'pre.FEAT', but model 'pre' of step 'pre' has no output 'FEAT' (did you mean 'FEATURES'?) "
            "(its outputs: FEATURES)",
        ),
        (
            {"clf": {"FEATURES": "ghost.FEATURES"}},
            "step 'clf': input 'FEATURES' reads 'ghost.FEATURES', but no step is named 'ghost'",
        ),
        (
            {"pre": {"RAW": "IMAGE"}},
            "step 'pre': input 'RAW' reads 'IMAGE', which is not a pipeline input (inputs: RAW)",
        ),
        (
            {"clf": {"FEATURES": "RAW"}},
            "step 'clf': datatype mismatch on 'RAW': pipeline input 'RAW' is UINT8, but model 'clf' input 'FEATURES' expects FP32",
        ),
        (
            {"clf_model": "half"},
            (
                "datatype mismatch on 'pre.FEATURES': output 'FEATURES' of model 'pre' (step 'pre') is FP32, "
                "but model 'half' input 'FEATURES' expects FP16"
            ),
        ),
        (
            {"post": {"LOGITS": "pre.FEATURES"}},
            (
                "step 'post': shape mismatch on 'pre.FEATURES': output 'FEATURES' of model 'pre' (step 'pre') has shape [16], "
                "but model 'post' input 'LOGITS' expects [4]"
            ),
        ),
        ({"pre": {"RAW": "post.LABEL"}}, "steps form a cycle: pre -> clf -> post -> pre"),
    ],
)
def test_mistakes_are_named(changes: dict[str, Any], message: str) -> None:
    """Each mistake is reported with the pipeline, the step and the tensor."""
    text = rejected(classify(**changes))
    assert "pipeline 'classify'" in text
    assert message in text
    assert "test_validate.py:" in text  # the line that declared the step


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes give one error listing all of them."""
    text = rejected(classify(clf={"FEATURES": "RAW"}, post={"LOGITS": "pre.FEATURES"}))
    assert "datatype mismatch on 'RAW'" in text and "shape mismatch on 'pre.FEATURES'" in text


def test_batch_size_larger_than_a_members_is_rejected() -> None:
    """As on Triton, a pipeline may not batch more than a batching member allows."""
    p = Pipeline("batched", max_batch_size=16)
    p.input("FEATURES", "FP32", [16])
    p.step("clf", "clf", inputs={"FEATURES": "FEATURES"})
    p.output("LOGITS", "clf.LOGITS")
    assert (
        "allows maximum batch size 16, but it contains model 'clf' which only allows maximum batch size to be 8"
        in rejected(p)
    )


def test_outputs_must_be_produced_and_typed_consistently() -> None:
    """Outputs reading unknown tensors or declared with another type are rejected."""
    p = classify()
    p.output("SCORE", "post.SCORE", "INT32", [1])
    p.output("MISSING", "post.NOPE")
    text = rejected(p)
    assert "datatype mismatch on output 'SCORE'" in text
    assert "output 'MISSING' reads 'post.NOPE', but model 'post' of step 'post' has no output 'NOPE'" in text


def test_output_types_are_inferred_from_their_producer() -> None:
    """An output without a declared type takes its producer's."""
    p = classify()
    p.output("LOGITS", "clf.LOGITS")
    checked = check_pipeline(p.build(), lookup)
    logits = next(o for o in checked.spec.outputs if o.name == "LOGITS")
    # The pipeline does not batch; clf does, so its output keeps its batch dimension.
    assert (logits.datatype, logits.shape) == (DataType.FP32, (-1, 4))


def test_conditional_output_must_be_optional() -> None:
    """An output that a condition may leave missing must say optional: true."""
    p = Pipeline("maybe")
    p.input("A", "FP32", [-1])
    p.step("s", "two", inputs={"A": "A"}, when="params.go == True")
    p.output("Y", "s.Y", "FP32", [-1])
    assert (
        "output 'Y' may be missing (step 's' runs only when params.go == true); declare it optional"
        in rejected(p)
    )
    p = Pipeline("maybe")
    p.input("A", "FP32", [-1])
    p.step("s", "two", inputs={"A": "A"}, when="params.go == True")
    p.output("Y", "s.Y", "FP32", [-1], optional=True)
    checked = check_pipeline(p.build(), lookup)
    assert checked.may_skip == {"s"} and checked.may_be_missing == {"Y"}


def test_switch_cases_together_always_produce() -> None:
    """The outputs of all cases plus the default of a switch are never missing."""
    p = Pipeline("switch")
    p.input("A", "FP32", [-1])
    with p.switch("params.kind") as route:
        with route.case("x"):
            p.step("x", "two", inputs={"A": "A"})
        with route.default():
            p.step("y", "two", inputs={"A": "A"})
    p.output("Y", ["x.Y", "y.Y"], "FP32", [-1])
    assert check_pipeline(p.build(), lookup).may_be_missing == frozenset()


def test_optional_member_input_may_stay_unmapped() -> None:
    """A member's optional input needs no mapping; a skipped producer feeding it skips nothing."""
    p = Pipeline("opt")
    p.input("A", "FP32", [-1])
    p.step("maybe", "two", inputs={"A": "A"}, when="params.extra == True")
    p.step("s", "two", inputs={"A": "A", "B": "maybe.Y"})
    p.output("Y", "s.Y", "FP32", [-1])
    checked = check_pipeline(p.build(), lookup)
    assert checked.may_skip == {"maybe"}


def test_unused_inputs_and_steps_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """An input nobody reads and a step feeding no output are warnings, not errors."""
    p = classify()
    p.input("UNUSED", "FP32", [1])
    p.step("extra", "two", inputs={"A": "pre.FEATURES"})
    with caplog.at_level(logging.WARNING, logger="dagserve.dsl"):
        check_pipeline(p.build(), lookup)
    assert "input 'UNUSED' is not read by any step" in caplog.text
    assert "step 'extra' feeds no output and never runs" in caplog.text


def test_map_checks_element_shapes() -> None:
    """Mapping over a tensor checks its elements, not the whole tensor, against the model."""
    p = Pipeline("mapped")
    p.input("ROWS", "FP32", [-1, 16])
    p.step("clf", "clf", inputs={"FEATURES": "ROWS"}, map_over=["FEATURES"])
    p.output("LOGITS", "clf.LOGITS")
    checked = check_pipeline(p.build(), lookup)
    assert checked.spec.outputs[0].shape == (-1, 4)
    p = Pipeline("mapped")
    p.input("ROWS", "FP32", [-1, 8])
    p.step("clf", "clf", inputs={"FEATURES": "ROWS"}, map_over=["FEATURES"])
    p.output("LOGITS", "clf.LOGITS")
    assert (
        "gives elements of shape [8], but model 'clf' input 'FEATURES' expects [16] per element"
        in rejected(p)
    )


def test_loop_carry_must_match() -> None:
    """A loop may only feed an output back into an input of the same type."""
    p = Pipeline("looped")
    p.input("FEATURES", "FP32", [16])
    p.step("l", "clf", inputs={"FEATURES": "FEATURES"}, loop=loop(3, carry={"FEATURES": "LOGITS"}))
    p.output("LOGITS", "l.LOGITS")
    assert "loop.carry: output 'LOGITS' (FP32 [4]) cannot feed input 'FEATURES' (FP32 [16])" in rejected(p)


@pytest.mark.parametrize(
    ("tensor", "dims", "batching", "expected"),
    [
        (
            TensorType(datatype=DataType.FP32, dims=(16,), batched=False, producer=""),
            (16,),
            True,
            Adapt.EXPAND,
        ),
        (
            TensorType(datatype=DataType.FP32, dims=(-1, 16), batched=False, producer=""),
            (16,),
            True,
            Adapt.AS_IS,
        ),
        (
            TensorType(datatype=DataType.FP32, dims=(4,), batched=True, producer=""),
            (4,),
            False,
            Adapt.SQUEEZE,
        ),
        (
            TensorType(datatype=DataType.FP32, dims=(4,), batched=True, producer=""),
            (-1, 4),
            False,
            Adapt.AS_IS,
        ),
        (TensorType(datatype=DataType.FP32, dims=(4,), batched=True, producer=""), (4,), True, Adapt.AS_IS),
        (TensorType(datatype=DataType.FP32, dims=(4,), batched=True, producer=""), (5,), True, None),
        (TensorType(datatype=DataType.FP32, dims=(-1,), batched=False, producer=""), (3, 3), True, None),
    ],
)
def test_batch_dimension_adaptation_follows_triton(
    tensor: TensorType, dims: tuple[int, ...], batching: bool, expected: Adapt | None
) -> None:
    """Batching and non-batching tensors connect as Triton's ReshapeTensorDims allows."""
    assert adapt(tensor, dims, batching) is expected
