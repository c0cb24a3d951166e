"""The server core in process: loading, validation, execution, errors and statistics."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import (
    InferRequest,
    InvalidInputError,
    ModelExecutionError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestedOutput,
    Server,
    ServerOptions,
    UnsupportedError,
)
from dagserve.types import DataType

pytestmark = pytest.mark.anyio


def add_sub_request(**overrides: np.ndarray) -> InferRequest:
    inputs = {"INPUT0": np.arange(4, dtype=np.float32), "INPUT1": np.ones(4, dtype=np.float32)}
    inputs.update(overrides)
    return InferRequest(inputs=inputs)


async def test_triton_model_answers(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        response = await server.infer("add_sub", "", add_sub_request())
    np.testing.assert_array_equal(response.outputs["OUTPUT0"], [1, 2, 3, 4])
    np.testing.assert_array_equal(response.outputs["OUTPUT1"], [-1, 0, 1, 2])
    assert response.model_version == "1"


async def test_requested_subset_of_outputs(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        request = InferRequest(inputs=add_sub_request().inputs, outputs=(RequestedOutput(name="OUTPUT1"),))
        response = await server.infer("add_sub", "", request)
    assert list(response.outputs) == ["OUTPUT1"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (add_sub_request(INPUT0=np.zeros(4, np.int32)), "has datatype INT32, expected FP32"),
        (add_sub_request(INPUT0=np.zeros(5, np.float32)), "has shape [5], expected [4]"),
        (add_sub_request(EXTRA=np.zeros(4, np.float32)), "has no input 'EXTRA'"),
        (InferRequest(inputs={"INPUT0": np.zeros(4, np.float32)}), "expects input 'INPUT1'"),
        (InferRequest(inputs=add_sub_request().inputs, outputs=(RequestedOutput(name="NOPE"),)), "no output 'NOPE'"),
    ],
)
async def test_bad_input_is_named(triton_repo: Path, request_: InferRequest, message: str) -> None:
    async with Server(model_repository=triton_repo) as server:
        with pytest.raises(InvalidInputError) as info:
            await server.infer("add_sub", "", request_)
        assert message in str(info.value)
        assert (await server.infer("add_sub", "", add_sub_request())).outputs


async def test_batch_over_max_batch_size(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        with pytest.raises(InvalidInputError, match="batch size 9 exceeds the model's max_batch_size 8"):
            await server.infer("batched_scale", "", InferRequest(inputs={"X": np.zeros((9, 3), np.float32)}))


async def test_unknown_model_and_version(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
            await server.infer("nope", "", add_sub_request())
        with pytest.raises(ModelNotFoundError, match=r"no version 2 \(versions: 1, 3\)"):
            server.get_version("versioned", "2")


async def test_version_policy_and_explicit_versions(triton_repo: Path) -> None:
    """`specific` serves versions 1 and 3; no version means the newest."""
    async with Server(model_repository=triton_repo) as server:
        request = InferRequest(inputs={"IN": np.zeros(1, np.int32)})
        for version, expected in (("", 3), ("1", 1), ("3", 3)):
            response = await server.infer("versioned", version, request)
            assert response.outputs["VERSION"][0] == expected
        assert server.model_metadata("versioned")["versions"] == ["1", "3"]


async def test_model_failures(triton_repo: Path) -> None:
    """An exception in execute reaches the caller with its message, as on Triton; a TritonError
    keeps its message and code."""
    async with Server(model_repository=triton_repo) as server:
        with pytest.raises(ModelExecutionError) as info:
            await server.infer("raiser", "", InferRequest(inputs={"MODE": np.array([1], np.int32)}))
        assert "for model 'raiser_0_0', message: ValueError: secret internal detail" in str(info.value)
        with pytest.raises(InvalidInputError, match="MODE 2 is not allowed"):
            await server.infer("raiser", "", InferRequest(inputs={"MODE": np.array([2], np.int32)}))


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (1, "did not return its output 'OUT'"),
        (2, "returned output 'OUT' as INT64, but its config declares FP32"),
        (3, "with shape [3], but its config declares [2]"),
        (4, "returned output 'EXTRA', which its config does not declare"),
        (5, "returned 0 responses for 1 requests"),
    ],
)
async def test_wrong_outputs_are_named(triton_repo: Path, mode: int, message: str) -> None:
    async with Server(model_repository=triton_repo) as server:
        with pytest.raises(ModelExecutionError) as info:
            await server.infer("wrong_outputs", "", InferRequest(inputs={"MODE": np.array([mode], np.int32)}))
        assert message in str(info.value)


async def test_bytes_model(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        text = np.array([[b"ab", b"xyz"]], dtype=np.object_)
        response = await server.infer("string_case", "", InferRequest(inputs={"TEXT": text}))
    assert response.outputs["UPPER"].tolist() == [[b"AB", b"XYZ"]]
    assert response.outputs["LENGTH"].tolist() == [[2, 3]]
    assert response.datatypes["UPPER"] is DataType.BYTES


async def test_dynamic_batcher_merges_concurrent_requests(triton_repo: Path) -> None:
    """Concurrent requests reach the model as one execute call (the model reports its rows)."""
    async with Server(model_repository=triton_repo) as server:
        seen: list[int] = []

        async def one(i: int) -> None:
            r = await server.infer("batched_scale", "", InferRequest(inputs={"X": np.full((2, 3), i, np.float32)}))
            np.testing.assert_array_equal(r.outputs["Y"], np.full((2, 3), 2 * i))
            seen.append(int(r.outputs["BATCH"][0, 0]))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        stats = server.statistics("batched_scale")["model_stats"][0]
    assert max(seen) > 2
    assert stats["inference_count"] == 8
    assert stats["execution_count"] < 4
    assert stats["inference_stats"]["success"]["count"] == 4


async def test_bls_exec_calls_another_model(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        a, b = np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)
        response = await server.infer("bls_caller", "", InferRequest(inputs={"A": a, "B": b}))
        np.testing.assert_array_equal(response.outputs["SUM_TIMES_DIFF"], (a + b) * (a - b))
        with pytest.raises(ModelExecutionError, match="unknown model 'no_such_model'"):
            await server.infer("bls_caller", "", InferRequest(inputs={"A": -a - 1, "B": b}))


async def test_native_models_and_broken_configs(native_repo: Path) -> None:
    """Native models answer; broken ones do not stop them, and say why."""
    async with Server(model_repository=native_repo) as server:
        r = await server.infer("add_sub_native", "", add_sub_request())
        np.testing.assert_array_equal(r.outputs["OUTPUT0"], [1, 2, 3, 4])
        r = await server.infer("scaler", "", InferRequest(inputs={"X": np.ones((3, 2), np.float32)}))
        np.testing.assert_array_equal(r.outputs["Y"], np.full((3, 2), 3.0))
        index = {e["name"]: e for e in server.repository_index()}
        assert index["broken_unknown_key"]["state"] == "UNAVAILABLE"
        assert "field 'max_batch_sise': unknown field" in index["broken_unknown_key"]["reason"]
        assert not server.is_ready()  # strict readiness, as Triton
        with pytest.raises(ModelNotReadyError, match="max_batch_size"):
            await server.infer("broken_bad_type", "", InferRequest(inputs={"X": np.ones(1, np.float32)}))


async def test_explicit_load_and_unload(triton_repo: Path) -> None:
    options = ServerOptions(model_repository=triton_repo, model_control_mode="explicit", load_models=("add_sub",))
    async with Server(options) as server:
        assert server.model_names() == ["add_sub"]
        await server.load_model("versioned")
        assert server.model_ready("versioned")
        await server.unload_model("versioned")
        with pytest.raises(ModelNotFoundError):
            server.model_ready("versioned")
        states = {e["name"]: e["state"] for e in server.repository_index()}
        assert states["versioned"] == "UNAVAILABLE" and states["add_sub"] == "READY"


async def test_load_refused_without_explicit_mode(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        with pytest.raises(UnsupportedError, match="explicit"):
            await server.load_model("add_sub")
