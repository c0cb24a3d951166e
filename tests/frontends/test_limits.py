"""Per-request limits (dagserve/limits.py): each is refused over HTTP and gRPC with 400 /
INVALID_ARGUMENT naming the flag, before the tensor is built, and the server keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from dagserve.limits import Limits, json_depth
from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "triton_python"
LIMITS = Limits(max_tensor_elements=4, max_inputs=2, max_bytes_element_size=8, max_json_depth=6)


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False, limits=LIMITS, model_control_mode="explicit",
                         load_models=("add_sub", "string_case")) as server:
        yield server


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def add_sub_inputs(client: object, n: int = 4) -> list[object]:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, [n], "FP32")
        tensor.set_data_from_numpy(np.ones(n, dtype=np.float32))
        inputs.append(tensor)
    return inputs


def test_within_limits_still_answers(running: RunningServer) -> None:
    """A request at the limits is served normally over both protocols."""
    for client in (httpclient.InferenceServerClient(running.http_url),
                   grpcclient.InferenceServerClient(running.grpc_url)):
        result = client.infer("add_sub", add_sub_inputs(client))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full(4, 2, dtype=np.float32))


def test_huge_declared_shape_is_refused_before_allocation(running: RunningServer) -> None:
    """A shape of 10**12 elements with 4 elements of data is refused by the element limit
    (HTTP JSON, HTTP binary, gRPC raw and typed contents), never allocated."""
    url = f"http://{running.http_url}/v2/models/add_sub/infer"
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [10**12], "data": [1, 2, 3, 4]}]}
    status, text = post(url, json.dumps(doc).encode())
    assert status == 400 and "--max-tensor-elements" in text, text
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [10**12],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    status, text = post(url, header + bytes(16), {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "--max-tensor-elements" in text, text

    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for raw in (True, False):
            request = service_pb2.ModelInferRequest(model_name="add_sub")
            tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[2**40, 2**20])
            if raw:
                request.raw_input_contents.append(bytes(16))
            else:
                tensor.contents.fp32_contents.extend([1.0] * 4)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--max-tensor-elements" in info.value.details()


def test_element_limit_through_tritonclient(running: RunningServer) -> None:
    """tritonclient sending 5 elements against a limit of 4: 400 / INVALID_ARGUMENT."""
    http = httpclient.InferenceServerClient(running.http_url)
    with pytest.raises(InferenceServerException) as info:
        http.infer("add_sub", add_sub_inputs(http, 5))
    assert info.value.status() == "400" and "--max-tensor-elements" in info.value.message()
    grpc_client = grpcclient.InferenceServerClient(running.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("add_sub", add_sub_inputs(grpc_client, 5))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "--max-tensor-elements" in info.value.message()


def test_too_many_inputs(running: RunningServer) -> None:
    """Three inputs against a limit of two: refused before any is decoded."""
    url = f"http://{running.http_url}/v2/models/add_sub/infer"
    doc = {"inputs": [{"name": f"I{i}", "datatype": "FP32", "shape": [1], "data": [1]} for i in range(3)]}
    status, text = post(url, json.dumps(doc).encode())
    assert status == 400 and "--max-inputs" in text, text
    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="add_sub")
        for i in range(3):
            request.inputs.add(name=f"I{i}", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-inputs" in info.value.details()


def test_long_bytes_element(running: RunningServer) -> None:
    """A 9-byte BYTES element against a limit of 8 is refused in every encoding; 8 bytes pass."""
    http = httpclient.InferenceServerClient(running.http_url)
    grpc_client = grpcclient.InferenceServerClient(running.grpc_url)
    for client, module in ((http, httpclient), (grpc_client, grpcclient)):
        for binary in ((True, False) if module is httpclient else (True,)):
            for text, ok in ((b"12345678", True), (b"123456789", False)):
                tensor = module.InferInput("TEXT", [1, 1], "BYTES")
                if module is httpclient:
                    tensor.set_data_from_numpy(np.array([[text]], dtype=np.object_), binary_data=binary)
                else:
                    tensor.set_data_from_numpy(np.array([[text]], dtype=np.object_))
                if ok:
                    assert client.infer("string_case", [tensor]).as_numpy("UPPER")[0, 0] == text.upper()
                    continue
                with pytest.raises(InferenceServerException) as info:
                    client.infer("string_case", [tensor])
                assert "--max-bytes-element-size" in info.value.message()
                assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    with grpc.insecure_channel(running.grpc_url) as channel:  # typed bytes_contents too
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="string_case")
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"x" * 9)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-bytes-element-size" in info.value.details()


@pytest.mark.parametrize("depth", [7, 100_000])
def test_deep_json(running: RunningServer, depth: int) -> None:
    """JSON nested deeper than the limit is 400 naming the limit, on inference and on the
    repository API; 100k levels (past Python's recursion limit) too, never a 500."""
    data = "[" * (depth - 3) + "1.0" + "]" * (depth - 3)
    doc = '{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": ' + data + "}]}"
    status, text = post(f"http://{running.http_url}/v2/models/add_sub/infer", doc.encode())
    assert status == 400 and "--max-json-depth" in text, text
    body = "[" * depth + "]" * depth
    status, text = post(f"http://{running.http_url}/v2/repository/models/add_sub/load", body.encode())
    assert status == 400 and "--max-json-depth" in text, text
    assert httpclient.InferenceServerClient(running.http_url).is_server_live()


def test_json_depth_ignores_brackets_in_strings() -> None:
    """The depth scan counts only structural brackets, also around escaped quotes."""
    assert json_depth(b'{"a": "[[[[[[[[", "b": [1]}') == 2
    assert json_depth(rb'{"a": "\"[[[[", "b": "\\", "c": [[1]]}') == 3
    assert json_depth(b"[" * 50 + b"]" * 50) == 50


def test_limits_reject_nonsense() -> None:
    """A limit of zero or less is a configuration error."""
    with pytest.raises(ValueError, match="max_inputs"):
        Limits(max_inputs=0)


def test_cli_flags_and_env_set_limits() -> None:
    """The flags (and DAGSERVE_* env) reach the server; a bad value is a usage error."""
    from dagserve.cli import build_parser
    from dagserve.cli_security import server_options

    args = build_parser().parse_args(["serve", "--model-repository", ".", "--max-inputs", "3", "--max-json-depth", "9"])
    limits = server_options(args)["limits"]
    assert limits.max_inputs == 3 and limits.max_json_depth == 9
    assert limits.max_tensor_elements == Limits().max_tensor_elements
    proc = subprocess.run([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", ".",
                           "--max-inputs", "0"], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--max-inputs" in proc.stderr


def test_empty_tensor_with_huge_dimensions(running: RunningServer) -> None:
    """Found by bench/fuzz_wire.py: shape [0, 8, 2**62] holds no element, but numpy cannot shape
    it; it is a 400 / INVALID_ARGUMENT naming the limit, not a 500 (HTTP JSON and binary, gRPC)."""
    url = f"http://{running.http_url}/v2/models/add_sub/infer"
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [0, 8, 2**62], "data": []}]}
    status, text = post(url, json.dumps(doc).encode())
    assert status == 400 and "--max-tensor-elements" in text, text
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [0, 2**40],
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    status, text = post(url, header, {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "--max-tensor-elements" in text, text
    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for raw in (True, False):
            request = service_pb2.ModelInferRequest(model_name="add_sub")
            request.inputs.add(name="INPUT0", datatype="FP16", shape=[0, 8, 2**62])
            if raw:
                request.raw_input_contents.append(b"")
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert "--max-tensor-elements" in info.value.details()
