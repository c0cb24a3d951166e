"""The gRPC frontend against the stock Triton clients (sync, asyncio and streaming)."""

from __future__ import annotations

import functools
import json
import queue
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tc_aio
from tritonclient.utils import InferenceServerException

from dagserve._proto import grpc_service_pb2 as pb
from dagserve._proto import grpc_service_pb2_grpc as pb_grpc
from dagserve._proto import health_pb2, health_pb2_grpc
from dagserve.engine import Server, ServerOptions
from dagserve.errors import InvalidInputError, UnsupportedError
from dagserve.frontends.grpc import serve_grpc
from dagserve.frontends.grpc_codec import decode_infer_request, encode_infer_response
from dagserve.tensor_bytes import decode_bytes, encode_bytes
from dagserve.testing import FileGate, RunningServer, serve_in_thread, wait_until
from dagserve.types import DataType, InferResponse

REPO = Path(__file__).resolve().parents[1] / "repos" / "triton_python"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, http=False, metrics=False) as running:
        yield running


@pytest.fixture(scope="module")
def url(running: RunningServer) -> str:
    return running.grpc_url


@pytest.fixture
def client(url: str) -> Iterator[tc.InferenceServerClient]:
    with tc.InferenceServerClient(url) as client:
        yield client


@pytest.fixture
def stub(url: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Our own stub, for messages tritonclient will not build (typed contents, bad raw data)."""
    with grpc.insecure_channel(url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[tc.InferInput]:
    inputs = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        tensor = tc.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def _assert_still_serving(client: tc.InferenceServerClient) -> None:
    a = np.arange(4, dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, a))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def _fp32_request(model: str = "add_sub", n: int = 4, **raw: bytes) -> pb.ModelInferRequest:
    """A raw-content request with inputs named by ``raw`` (default: add_sub's two inputs)."""
    raw = raw or {"INPUT0": np.ones(n, np.float32).tobytes(), "INPUT1": np.ones(n, np.float32).tobytes()}
    request = pb.ModelInferRequest(model_name=model)
    for name, data in raw.items():
        request.inputs.add(name=name, datatype="FP32", shape=[n])
        request.raw_input_contents.append(data)
    return request


# --------------------------------------------------------------------------------------------
# Health, metadata, configuration, statistics


def test_server_health_and_metadata(client: tc.InferenceServerClient) -> None:
    """ServerLive/Ready/Metadata answer as Triton's do."""
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "dagserve"
    assert "model_repository" in meta.extensions


def test_model_ready_and_unknown_model(client: tc.InferenceServerClient) -> None:
    """ModelReady is true for a loaded model, and OK with ready=false for an unknown model or a
    version that is not served, as on Triton (tritonclient returns False, it does not raise)."""
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("versioned", "3")
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("versioned", "2") is False


def test_model_metadata(client: tc.InferenceServerClient) -> None:
    """ModelMetadata lists versions and tensor signatures (batch dim as -1)."""
    meta = client.get_model_metadata("add_sub", as_json=True)
    assert meta["name"] == "add_sub"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT0", "FP32", ["4"]),
        ("INPUT1", "FP32", ["4"]),
    ]
    assert client.get_model_metadata("versioned").versions == ["1", "3"]
    batched = client.get_model_metadata("batched_scale")
    assert list(batched.inputs[0].shape) == [-1, 3]


def test_model_config(client: tc.InferenceServerClient) -> None:
    """ModelConfig returns the config as Triton's protobuf (enums, dims, scheduling)."""
    config = client.get_model_config("batched_scale").config
    assert config.name == "batched_scale"
    assert config.max_batch_size == 8
    assert config.input[0].data_type == tc.model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [3]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 20000
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("no_such_model")
    assert _status(info.value) == "StatusCode.NOT_FOUND"


def test_statistics_count_inferences(client: tc.InferenceServerClient) -> None:
    """ModelStatistics counts each successful inference (a delta: the server is shared)."""
    before = client.get_inference_statistics("add_sub").model_stats[0]
    for _ in range(3):
        _assert_still_serving(client)
    stats = client.get_inference_statistics("add_sub").model_stats
    assert stats[0].name == "add_sub"
    assert stats[0].inference_stats.success.count == before.inference_stats.success.count + 3
    assert stats[0].execution_count == before.execution_count + 3
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} >= {"add_sub", "raiser"}


def test_repository_index(client: tc.InferenceServerClient) -> None:
    """RepositoryIndex lists every model version with its state."""
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[("add_sub", "1")] == "READY"
    assert index[("versioned", "3")] == "READY"


def test_load_refused_without_explicit_mode(client: tc.InferenceServerClient) -> None:
    """Load/unload are UNIMPLEMENTED when the server does not run in explicit mode."""
    with pytest.raises(InferenceServerException) as info:
        client.load_model("add_sub")
    assert _status(info.value) == "StatusCode.UNIMPLEMENTED"


def test_health_service(url: str) -> None:
    """grpc.health.v1 Check reports the server and each model; unknown names are NOT_FOUND."""
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        assert health.Check(health_pb2.HealthCheckRequest(service="add_sub")).status == serving
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no_such_model"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="no_such_model"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        watch.cancel()


# --------------------------------------------------------------------------------------------
# Inference


def test_infer_raw(client: tc.InferenceServerClient) -> None:
    """ModelInfer with raw contents returns raw outputs and echoes the request id."""
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([4, 3, 2, 1], dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, b), request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "req-7"
    assert response.model_name == "add_sub"
    assert response.model_version == "1"
    assert len(response.raw_output_contents) == 2


def test_infer_requested_outputs(client: tc.InferenceServerClient) -> None:
    """Only the requested outputs come back."""
    a = np.ones(4, dtype=np.float32)
    result = client.infer("add_sub", _add_sub_inputs(a, a), outputs=[tc.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros(4, np.float32))


def test_infer_typed_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Inputs sent as typed InferTensorContents are accepted; outputs still come back raw."""
    request = pb.ModelInferRequest(model_name="add_sub", id="typed")
    for name, values in (("INPUT0", [1.0, 2.0, 3.0, 4.0]), ("INPUT1", [0.5, 0.5, 0.5, 0.5])):
        request.inputs.add(name=name, datatype="FP32", shape=[4]).contents.fp32_contents.extend(values)
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    out = {
        o.name: np.frombuffer(raw, "<f4") for o, raw in zip(response.outputs, response.raw_output_contents)
    }
    np.testing.assert_array_equal(out["OUTPUT0"], [1.5, 2.5, 3.5, 4.5])


def test_infer_bytes_model(client: tc.InferenceServerClient) -> None:
    """BYTES tensors round-trip (length-prefixed raw), with a batch dimension."""
    text = np.array([[b"hello", b""], [b"grpc \xe2\x9c\x93", b"x"]], dtype=np.object_)
    tensor = tc.InferInput("TEXT", [2, 2], "BYTES")
    tensor.set_data_from_numpy(text)
    result = client.infer("string_case", [tensor])
    assert result.as_numpy("UPPER").tolist() == [[b"HELLO", b""], [b"GRPC \xe2\x9c\x93", b"X"]]
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [[5, 0], [8, 1]])


def test_infer_versions(client: tc.InferenceServerClient) -> None:
    """An explicit version is honoured, none picks the latest, a missing one is NOT_FOUND."""
    tensor = tc.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([0], dtype=np.int32))
    assert client.infer("versioned", [tensor], model_version="1").as_numpy("VERSION")[0] == 1
    assert client.infer("versioned", [tensor]).as_numpy("VERSION")[0] == 3
    with pytest.raises(InferenceServerException) as info:
        client.infer("versioned", [tensor], model_version="2")
    assert _status(info.value) == "StatusCode.NOT_FOUND"
    _assert_still_serving(client)


ECHO_CONFIG = """
name: "echo_params"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
ECHO_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("PARAMS", np.array([r.parameters().encode()], dtype=np.object_))]
            )
            for r in requests
        ]
"""


@pytest.fixture(scope="module")
def echo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose one model answers with the request parameters it received, as JSON."""
    repo = tmp_path_factory.mktemp("echo_repo")
    (repo / "echo_params" / "1").mkdir(parents=True)
    (repo / "echo_params" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repo / "echo_params" / "1" / "model.py").write_text(ECHO_MODEL)
    with serve_in_thread(repo, http=False, metrics=False) as running:
        yield running.grpc_url


def test_request_parameters_reach_the_model(echo_url: str) -> None:
    """Request parameters of all five wire kinds reach the model as plain values."""
    request = pb.ModelInferRequest(model_name="echo_params")
    request.inputs.add(name="IN", datatype="INT32", shape=[1]).contents.int_contents.append(0)
    request.parameters["flag"].bool_param = True
    request.parameters["count"].int64_param = -3
    request.parameters["name"].string_param = "x"
    request.parameters["ratio"].double_param = 0.5
    request.parameters["big"].uint64_param = 2**64 - 1
    with grpc.insecure_channel(echo_url) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    (length,) = struct.unpack_from("<I", response.raw_output_contents[0])
    params = json.loads(response.raw_output_contents[0][4 : 4 + length])
    assert params == {"flag": True, "count": -3, "name": "x", "ratio": 0.5, "big": 2**64 - 1}


def test_stream_opt_in_parameter_is_not_passed_to_the_model(echo_url: str) -> None:
    """triton_enable_empty_final_response is consumed by the frontend, not seen by the model."""
    with tc.InferenceServerClient(echo_url) as client:
        requests = [{"model_name": "echo_params", "inputs": [_int_input("IN", 0)], "parameters": {"k": 1}}]
        ((result, error),) = _stream_results(client, requests, enable_empty_final_response=True)
    assert error is None
    assert json.loads(result.as_numpy("PARAMS")[0]) == {"k": 1}


def test_aio_client_concurrent_inference(url: str) -> None:
    """tritonclient.grpc.aio runs many concurrent requests, each answered correctly."""

    async def main() -> None:
        async with tc_aio.InferenceServerClient(url) as client:
            assert await client.is_server_ready()
            results: dict[int, np.ndarray] = {}

            async def one(i: int) -> None:
                a = np.full(4, i, dtype=np.float32)
                result = await client.infer("add_sub", _add_sub_inputs(a, a), request_id=str(i))
                assert result.get_response().id == str(i)
                results[i] = result.as_numpy("OUTPUT0")

            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(one, i)
            for i, value in results.items():
                np.testing.assert_array_equal(value, np.full(4, 2 * i, np.float32))
            assert len(results) == 16

    anyio.run(main)


# --------------------------------------------------------------------------------------------
# Streaming


def _stream_results(
    client: tc.InferenceServerClient, requests: list[dict[str, Any]], **stream_kwargs: Any
) -> list[tuple[Any, Any]]:
    """Send ``requests`` on one stream; return every (result, error) the callback received."""
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        for kwargs in requests:
            client.async_stream_infer(**kwargs, **stream_kwargs)
        out = [received.get(timeout=60) for _ in requests]
    finally:
        client.stop_stream()
    assert received.empty(), "more responses than requests"
    return out


def test_stream_infer_with_error_keeps_stream_open(client: tc.InferenceServerClient) -> None:
    """A failing request on a stream gets an in-stream error; the others still succeed."""
    a = np.arange(4, dtype=np.float32)
    requests = [
        {"model_name": "add_sub", "inputs": _add_sub_inputs(a, a), "request_id": "0"},
        {"model_name": "no_such_model", "inputs": _add_sub_inputs(a, a), "request_id": "bad"},
        {"model_name": "add_sub", "inputs": _add_sub_inputs(a, a * 0), "request_id": "2"},
    ]
    results = _stream_results(client, requests)
    errors = [e for _, e in results if e is not None]
    assert len(errors) == 1 and "no_such_model" in errors[0].message()
    ok = {r.get_response().id: r for r, e in results if e is None}
    assert set(ok) == {"0", "2"}
    np.testing.assert_array_equal(ok["0"].as_numpy("OUTPUT0"), a * 2)
    np.testing.assert_array_equal(ok["2"].as_numpy("OUTPUT0"), a)
    for result in ok.values():
        assert result.get_response().parameters["triton_final_response"].bool_param is True


def test_stream_empty_final_response_opt_in(client: tc.InferenceServerClient) -> None:
    """With the empty-final-response opt-in, each request still gets exactly one (final) response."""
    a = np.ones(4, dtype=np.float32)
    requests = [
        {"model_name": "add_sub", "inputs": _add_sub_inputs(a, a), "request_id": str(i)} for i in range(3)
    ]
    results = _stream_results(client, requests, enable_empty_final_response=True)
    for result, error in results:
        assert error is None
        response = result.get_response()
        assert response.parameters["triton_final_response"].bool_param is True
        assert "triton_enable_empty_final_response" not in response.parameters


def test_stream_processes_requests_concurrently(tmp_path: Path) -> None:
    """Requests on one stream run concurrently: the dynamic batcher sees them together. Its
    queue delay is made far longer than the test, so a batch leaves only once all eight
    requests are queued at the same time (a stream that ran them one by one would hang)."""
    shutil.copytree(REPO / "batched_scale", tmp_path / "batched_scale")
    config = tmp_path / "batched_scale" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 20000", "max_queue_delay_microseconds: 600000000"))
    requests = []
    for i in range(8):
        x = tc.InferInput("X", [1, 3], "FP32")
        x.set_data_from_numpy(np.full((1, 3), i, dtype=np.float32))
        requests.append({"model_name": "batched_scale", "inputs": [x], "request_id": str(i)})
    with serve_in_thread(tmp_path, http=False, metrics=False) as running, tc.InferenceServerClient(running.grpc_url) as client:
        results = _stream_results(client, requests)
    assert all(error is None for _, error in results)
    by_id = {r.get_response().id: r for r, _ in results}
    for i in range(8):
        np.testing.assert_array_equal(by_id[str(i)].as_numpy("Y"), np.full((1, 3), 2 * i, np.float32))
    assert [int(r.as_numpy("BATCH")[0, 0]) for r in by_id.values()] == [8] * 8


def test_aio_stream_infer(url: str) -> None:
    """tritonclient.grpc.aio's stream_infer gets one response per request."""

    async def main() -> None:
        async def requests() -> Any:
            for i in range(5):
                a = np.full(4, i, dtype=np.float32)
                yield {"model_name": "add_sub", "inputs": _add_sub_inputs(a, a), "request_id": str(i)}

        seen = {}
        async with tc_aio.InferenceServerClient(url) as client:
            async for result, error in client.stream_infer(requests()):
                assert error is None
                seen[result.get_response().id] = result.as_numpy("OUTPUT0")
                if len(seen) == 5:
                    break
        for i in range(5):
            np.testing.assert_array_equal(seen[str(i)], np.full(4, 2 * i, np.float32))

    anyio.run(main)


def test_stream_cancelled_mid_flight(slow_gate: FileGate) -> None:
    """A client cancelling a stream cancels its requests in flight: one queued behind a busy
    instance never runs, and the server goes on serving."""
    x_hold, x_now, x_after = (tc.InferInput("SLEEP_MS", [1, 1], "INT32") for _ in range(3))
    x_hold.set_data_from_numpy(np.array([[-1]], np.int32))
    x_now.set_data_from_numpy(np.array([[0]], np.int32))
    x_after.set_data_from_numpy(np.array([[1]], np.int32))
    with (
        serve_in_thread(REPO.parent / "slow", http=False, metrics=False) as running,
        tc.InferenceServerClient(running.grpc_url) as client,
    ):
        try:
            client.start_stream(callback=lambda result, error: None)
            client.async_stream_infer("slow", [x_hold], request_id="held")
            slow_gate.wait_started()
            client.async_stream_infer("slow", [x_now], request_id="queued")
            wait_until(lambda: running.in_flight("slow") == 2, what="the second request is queued")
            client.stop_stream(cancel_requests=True)
            # The queued request leaves at once (the held one may finish or be cancelled).
            wait_until(lambda: running.in_flight("slow") <= 1, what="the cancelled stream's queued request left")
        finally:
            slow_gate.release()
        wait_until(lambda: running.in_flight("slow") == 0, what="every request of the stream ended")
        assert client.infer("slow", [x_after]).as_numpy("DONE")[0, 0] == 1
        assert slow_gate.calls() == ["-1", "1"]  # never the queued request's 0


# --------------------------------------------------------------------------------------------
# Bad input: each case has a precise status, and the server keeps serving afterwards


def _int_input(name: str, value: int) -> tc.InferInput:
    tensor = tc.InferInput(name, [1], "INT32")
    tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
    return tensor


def _fp32(name: str, shape: list[int]) -> tc.InferInput:
    tensor = tc.InferInput(name, shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    return tensor


BAD_CLIENT_REQUESTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown model": ({"model_name": "nope", "inputs": [_fp32("INPUT0", [4])]}, "NOT_FOUND", "nope"),
    "unknown version": (
        {
            "model_name": "add_sub",
            "model_version": "9",
            "inputs": [_fp32("INPUT0", [4]), _fp32("INPUT1", [4])],
        },
        "NOT_FOUND",
        "9",
    ),
    "missing input": (
        {"model_name": "add_sub", "inputs": [_fp32("INPUT0", [4])]},
        "INVALID_ARGUMENT",
        "INPUT1",
    ),
    "extra input": (
        {
            "model_name": "add_sub",
            "inputs": [_fp32("INPUT0", [4]), _fp32("INPUT1", [4]), _fp32("EXTRA", [4])],
        },
        "INVALID_ARGUMENT",
        "EXTRA",
    ),
    "wrong dtype": (
        {"model_name": "add_sub", "inputs": [_fp32("INPUT0", [4]), _int_input("INPUT1", 1)]},
        "INVALID_ARGUMENT",
        "INPUT1",
    ),
    "wrong shape": (
        {"model_name": "add_sub", "inputs": [_fp32("INPUT0", [5]), _fp32("INPUT1", [4])]},
        "INVALID_ARGUMENT",
        "INPUT0",
    ),
    "batch too large": (
        {"model_name": "batched_scale", "inputs": [_fp32("X", [9, 3])]},
        "INVALID_ARGUMENT",
        "8",
    ),
    "execute raises": (
        {"model_name": "raiser", "inputs": [_int_input("MODE", 1)]},
        "INTERNAL",
        "message: ValueError: secret internal detail",
    ),
    "model returns error": (
        {"model_name": "raiser", "inputs": [_int_input("MODE", 2)]},
        "",
        "MODE 2 is not allowed",
    ),
    "missing output": ({"model_name": "wrong_outputs", "inputs": [_int_input("MODE", 1)]}, "INTERNAL", ""),
    "wrong output dtype": (
        {"model_name": "wrong_outputs", "inputs": [_int_input("MODE", 2)]},
        "INTERNAL",
        "",
    ),
    "wrong output shape": (
        {"model_name": "wrong_outputs", "inputs": [_int_input("MODE", 3)]},
        "INTERNAL",
        "",
    ),
    "undeclared output": ({"model_name": "wrong_outputs", "inputs": [_int_input("MODE", 4)]}, "INTERNAL", ""),
    "too few responses": ({"model_name": "wrong_outputs", "inputs": [_int_input("MODE", 5)]}, "INTERNAL", ""),
}


@pytest.mark.parametrize("case", list(BAD_CLIENT_REQUESTS))
def test_bad_request_status(client: tc.InferenceServerClient, case: str) -> None:
    """Each malformed or failing request gets its status and a message naming the problem."""
    kwargs, code, fragment = BAD_CLIENT_REQUESTS[case]
    with pytest.raises(InferenceServerException) as info:
        client.infer(**kwargs)
    if code:
        assert _status(info.value) == f"StatusCode.{code}", info.value.message()
    assert fragment in info.value.message()
    assert "Traceback" not in info.value.message()
    _assert_still_serving(client)


def _raw_case(**changes: Any) -> pb.ModelInferRequest:
    request = _fp32_request()
    for key, value in changes.items():
        if key == "raw":
            del request.raw_input_contents[:]
            request.raw_input_contents.extend(value)
        elif key == "shape0":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        elif key == "datatype0":
            request.inputs[0].datatype = value
        elif key == "contents0":
            request.inputs[0].contents.fp32_contents.extend(value)
    return request


FOUR = np.ones(4, np.float32).tobytes()
BAD_RAW_REQUESTS: dict[str, tuple[pb.ModelInferRequest, grpc.StatusCode, str]] = {
    "raw too short": (_raw_case(raw=[FOUR[:15], FOUR]), grpc.StatusCode.INVALID_ARGUMENT, "INPUT0"),
    "raw too long": (_raw_case(raw=[FOUR, FOUR + b"\0"]), grpc.StatusCode.INVALID_ARGUMENT, "INPUT1"),
    "raw count differs": (_raw_case(raw=[FOUR]), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    "raw mixed with contents": (
        _raw_case(contents0=[1.0, 2.0, 3.0, 4.0]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INPUT0",
    ),
    "negative dimension": (_raw_case(shape0=[-4]), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    "absurd shape": (_raw_case(shape0=[2147483648]), grpc.StatusCode.INVALID_ARGUMENT, "INPUT0"),
    "absurd rank-2 shape": (_raw_case(shape0=[2**31, 2**31]), grpc.StatusCode.INVALID_ARGUMENT, "INPUT0"),
    "unknown datatype": (_raw_case(datatype0="FP8"), grpc.StatusCode.INVALID_ARGUMENT, "FP8"),
}


@pytest.mark.parametrize("case", list(BAD_RAW_REQUESTS))
def test_bad_raw_request_status(
    stub: pb_grpc.GRPCInferenceServiceStub, client: tc.InferenceServerClient, case: str
) -> None:
    """Raw data that does not fit the declared tensors is INVALID_ARGUMENT, never a crash."""
    request, code, fragment = BAD_RAW_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == code
    assert fragment in info.value.details()
    _assert_still_serving(client)


def test_typed_contents_errors(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """FP16 via contents, short contents, and absurd shapes with contents are INVALID_ARGUMENT."""
    fp16 = pb.ModelInferRequest(model_name="add_sub")
    fp16.inputs.add(name="INPUT0", datatype="FP16", shape=[4]).contents.fp32_contents.extend([1, 2, 3, 4])
    short = pb.ModelInferRequest(model_name="add_sub")
    short.inputs.add(name="INPUT0", datatype="FP32", shape=[2147483648]).contents.fp32_contents.extend([1])
    for request, fragment in ((fp16, "raw_input_contents"), (short, "2147483648")):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in info.value.details()


# --------------------------------------------------------------------------------------------
# Servers with other options


def test_message_size_limit() -> None:
    """A message over max_message_size is refused by gRPC with RESOURCE_EXHAUSTED."""
    with (
        serve_in_thread(
            REPO,
            http=False,
            metrics=False,
            grpc_max_message_size=4096,
            model_control_mode="explicit",
            load_models=("add_sub",),
        ) as small,
        tc.InferenceServerClient(small.grpc_url) as client,
    ):
        _assert_still_serving(client)
        big = np.zeros(4096, dtype=np.float32)
        inputs = [tc.InferInput(n, [4096], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as info:
            client.infer("add_sub", inputs)
        assert _status(info.value) == "StatusCode.RESOURCE_EXHAUSTED"
        _assert_still_serving(client)


def test_repository_load_unload() -> None:
    """In explicit mode RepositoryModelUnload/Load change what is served; unknown names are NOT_FOUND."""
    with (
        serve_in_thread(
            REPO, http=False, metrics=False, model_control_mode="explicit", load_models=("add_sub",)
        ) as explicit,
        tc.InferenceServerClient(explicit.grpc_url) as client,
    ):
        assert client.is_model_ready("add_sub")
        client.unload_model("add_sub")
        with pytest.raises(InferenceServerException):
            client.infer("add_sub", _add_sub_inputs(np.ones(4, np.float32), np.ones(4, np.float32)))
        client.load_model("add_sub")
        _assert_still_serving(client)
        with pytest.raises(InferenceServerException) as info:
            client.load_model("no_such_model")
        assert _status(info.value) == "StatusCode.NOT_FOUND"


def test_cancellation_stops_and_releases_the_port() -> None:
    """serve_grpc reports its port, serves, and on cancellation stops and frees the port."""

    async def main() -> None:
        async with Server(ServerOptions()) as server:
            async with anyio.create_task_group() as tg:
                port = await tg.start(functools.partial(serve_grpc, server, host="127.0.0.1", port=0))
                async with tc_aio.InferenceServerClient(f"127.0.0.1:{port}") as client:
                    assert await client.is_server_live()
                tg.cancel_scope.cancel()
            async with anyio.create_task_group() as tg:
                again = await tg.start(functools.partial(serve_grpc, server, host="127.0.0.1", port=port))
                assert again == port
                tg.cancel_scope.cancel()

    anyio.run(main)


def test_port_in_use_is_an_error(running: RunningServer) -> None:
    """Binding a port another server holds raises OSError instead of sharing it."""
    port = int(running.grpc_url.rsplit(":", 1)[1])

    async def main() -> None:
        with pytest.raises(OSError):
            await serve_grpc(running.server, host="127.0.0.1", port=port)

    anyio.run(main)


# --------------------------------------------------------------------------------------------
# The codec's pure functions


def test_bytes_codec_round_trip() -> None:
    """BYTES tensors encode with 4-byte little-endian prefixes and decode back."""
    array = np.array([b"a", b"", "\u00e9", b"xyz"], dtype=np.object_)
    raw = encode_bytes(array)
    assert raw[:5] == struct.pack("<I", 1) + b"a"
    decoded = decode_bytes(raw, name="T", count=4)
    assert decoded.tolist() == [b"a", b"", "\u00e9".encode(), b"xyz"]


@pytest.mark.parametrize(
    ("raw", "expected", "fragment"),
    [
        (b"\x05\x00\x00\x00abc", 1, "claims 5 bytes"),
        (b"\x01\x00", 1, "cannot hold"),
        (b"\x01\x00\x00\x00a\x01", 1, "inside a length prefix"),
        (b"\x00\x00\x00\x00", 2, "cannot hold"),
        (b"\x00\x00\x00\x00" * 3, 2, "holds 3 elements"),
        (b"", 2**40, "cannot hold"),
    ],
)
def test_bytes_decode_rejects_malformed(raw: bytes, expected: int, fragment: str) -> None:
    """Truncated or miscounted BYTES data is an InvalidInputError naming the problem."""
    with pytest.raises(InvalidInputError, match=fragment):
        decode_bytes(raw, name="T", count=expected)


def test_decode_raw_is_zero_copy_and_typed() -> None:
    """Raw fixed-size inputs become read-only numpy views with the wire datatype recorded."""
    request = _fp32_request(A=np.arange(4, dtype="<f4").tobytes())
    half = request.inputs.add(name="H", datatype="FP16", shape=[2, 1])
    del half  # raw data for H follows
    request.raw_input_contents.append(np.array([1.5, -2], dtype="<f2").tobytes())
    request.parameters["p"].uint64_param = 2**64 - 1
    decoded = decode_infer_request(request)
    assert decoded.inputs["A"].tolist() == [0, 1, 2, 3]
    assert not decoded.inputs["A"].flags.writeable
    assert decoded.inputs["H"].shape == (2, 1) and decoded.inputs["H"].dtype == np.float16
    assert decoded.datatypes["H"] is DataType.FP16
    assert decoded.parameters == {"p": 2**64 - 1}
    assert decoded.outputs is None


def test_decode_narrow_int_contents_range_checked() -> None:
    """INT8 values arrive widened in int_contents and must fit INT8."""
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="I", datatype="INT8", shape=[2]).contents.int_contents.extend([-128, 127])
    assert decode_infer_request(request).inputs["I"].dtype == np.int8
    request.inputs[0].contents.int_contents[1] = 128
    with pytest.raises(InvalidInputError, match="out of range"):
        decode_infer_request(request)


def test_decode_refuses_shared_memory() -> None:
    """Shared-memory parameters are an UnsupportedError (UNIMPLEMENTED), not silently ignored."""
    request = _fp32_request()
    request.inputs[0].parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(UnsupportedError, match="shared memory"):
        decode_infer_request(request)


def test_encode_response_raw_and_parameters() -> None:
    """Outputs leave as raw little-endian bytes; BF16 keeps its datatype; parameters keep their type."""
    response = InferResponse(
        model_name="m",
        model_version="1",
        outputs={"F": np.arange(3, dtype=">f4"), "B": np.array([0x3F80], dtype=np.uint16)},
        datatypes={"F": DataType.FP32, "B": DataType.BF16},
        parameters={"ok": True, "n": 2**63, "r": 0.5, "s": "x"},
    )
    msg = encode_infer_response(response, request_id="rid")
    assert msg.id == "rid"
    assert [(o.name, o.datatype, list(o.shape)) for o in msg.outputs] == [
        ("F", "FP32", [3]),
        ("B", "BF16", [1]),
    ]
    assert np.frombuffer(msg.raw_output_contents[0], "<f4").tolist() == [0, 1, 2]
    assert msg.raw_output_contents[1] == b"\x80\x3f"
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in msg.parameters.items()}
    assert kinds == {"ok": "bool_param", "n": "uint64_param", "r": "double_param", "s": "string_param"}
