"""BLS: native Python models call models with dagserve.call_model (batched at the target when
gathered), and pb_utils BLS can call a pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dagserve import InferRequest, ModelExecutionError, ModelNotFoundError, Server, ServerOptions

pytestmark = pytest.mark.anyio

REPO = Path(__file__).parent.parent / "repos" / "pipelines"


def serve(*models: str) -> Server:
    return Server(ServerOptions(model_repository=REPO, model_control_mode="explicit", load_models=models))


async def test_gathered_native_calls_batch_at_the_target() -> None:
    """Five calls gathered with asyncio.gather reach the classifier as one batch."""
    async with serve("classifier", "bls_gather") as server:
        rows = np.eye(16, dtype=np.float32)[:5]
        response = await server.infer("bls_gather", "", InferRequest(inputs={"FEATURES": rows}))
        np.testing.assert_array_equal(response.outputs["LOGITS"].argmax(axis=1), [0, 1, 2, 3, 0])
        batches = server.statistics("classifier")["model_stats"][0]["batch_stats"]
    assert max(b["batch_size"] for b in batches) > 1
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == 5


async def test_native_call_errors_are_raised_with_their_class() -> None:
    """dagserve.call_model raises the target's error; the caller's client sees its class."""
    async with serve("classifier", "bls_gather") as server:
        with pytest.raises(ModelNotFoundError, match="unknown model 'no_such_model'"):
            await server.infer(
                "bls_gather", "", InferRequest(inputs={"FEATURES": np.zeros((0, 16), np.float32)})
            )


async def test_sync_native_calls_from_a_worker_thread() -> None:
    """dagserve.call_model_sync works from a model whose code runs in a worker thread."""
    async with serve("double", "triple", "bls_sync") as server:
        response = await server.infer(
            "bls_sync", "", InferRequest(inputs={"X": np.array([1, 2], np.float32)})
        )
    assert response.outputs["Y"].tolist() == [5, 10]


async def test_pb_utils_bls_calls_a_pipeline() -> None:
    """A Triton Python model's BLS request to a YAML pipeline gets the pipeline's outputs, and
    a request to a missing pipeline comes back as an error response."""
    async with serve("preprocess", "classifier", "postprocess", "classify_yaml", "bls_pipeline") as server:
        request = InferRequest(inputs={"RAW": np.frombuffer(b"\x01\x01\x01\x05", np.uint8)})
        response = await server.infer("bls_pipeline", "", request)
        assert response.outputs["LABEL"].tolist() == [b"dog"]
        with pytest.raises(ModelExecutionError, match="unknown model 'no_such_pipeline'"):
            await server.infer("bls_pipeline", "", InferRequest(inputs={"RAW": np.zeros(0, np.uint8)}))
