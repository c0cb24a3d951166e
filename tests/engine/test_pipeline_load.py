"""Pipelines that cannot be served fail at load time with a reason naming file, step and tensor;
the rest of the repository still loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagserve import InferRequest, ModelNotReadyError, Server, ServerOptions

pytestmark = pytest.mark.anyio

REPO = Path(__file__).parent.parent / "repos" / "pipelines"


def serve(*models: str) -> Server:
    return Server(ServerOptions(model_repository=REPO, model_control_mode="explicit", load_models=models))


@pytest.mark.parametrize(
    ("pipeline", "members", "expected"),
    [
        (
            "broken_shapes",
            ("preprocess", "classifier", "postprocess"),
            [
                (
                    "broken_shapes/config.yaml:8: pipeline 'broken_shapes', step 'classifier': datatype mismatch on 'RAW': "
                    "pipeline input 'RAW' is UINT8, but model 'classifier' input 'FEATURES' expects FP32"
                ),
                (
                    "broken_shapes/config.yaml:10: pipeline 'broken_shapes', step 'postprocess': shape mismatch on "
                    "'preprocess.FEATURES'"
                ),
            ],
        ),
        (
            "broken_member",
            ("double",),
            ["config.yaml:7: pipeline 'broken_member', step 'second': unknown model 'no_such_model'"],
        ),
        (
            "broken_failed_member",
            ("broken_model",),
            ["step 'step': model 'broken_model' is not ready: ImportError: weights not found"],
        ),
        ("broken_cycle", ("adder", "double"), ["steps form a cycle: a -> b -> a"]),
        (
            "broken_batch",
            ("bscale",),
            [
                (
                    "broken_batch/config.pbtxt: ensemble_scheduling.step[0]: pipeline 'broken_batch', step 'bscale': "
                    "the pipeline allows maximum batch size 16, but it contains model 'bscale' which only allows "
                    "maximum batch size to be 8"
                )
            ],
        ),
        (
            "broken_unwritten",
            ("double",),
            ["output 'Y' for ensemble 'broken_unwritten' is not written by any step"],
        ),
        (
            "broken_syntax",
            ("double",),
            [
                "broken_syntax/config.yaml:7:7: field 'pipeline.steps[1].model': required field is missing",
                "field 'pipeline.steps[1].modle': unknown field",
            ],
        ),
    ],
)
async def test_broken_pipelines_fail_with_a_precise_reason(
    pipeline: str, members: tuple[str, ...], expected: list[str]
) -> None:
    """Each broken pipeline is FAILED (UNAVAILABLE) with every problem in its reason."""
    async with serve(*members, pipeline) as server:
        assert not server.model_ready(pipeline)
        entry = next(e for e in server.repository_index() if e["name"] == pipeline)
        assert entry["state"] == "UNAVAILABLE"
        for text in expected:
            assert text in entry["reason"]
        with pytest.raises(ModelNotReadyError, match=f"model '{pipeline}' is not ready"):
            await server.infer(pipeline, "", InferRequest(inputs={}))


async def test_a_pipeline_loads_only_after_its_members() -> None:
    """With every model of the repository loading at once, pipelines still find their members
    (and a nested pipeline its inner one) ready, and only the broken ones fail."""
    async with Server(ServerOptions(model_repository=REPO)) as server:
        failed = {e["name"] for e in server.repository_index() if e["state"] != "READY"}
    assert failed == {name for name in failed if name.startswith("broken_")}
    assert "nested" not in failed and "classify_dsl" not in failed
