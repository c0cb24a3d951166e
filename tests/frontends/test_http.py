"""The HTTP frontend speaks KServe v2 / Triton HTTP as the stock ``tritonclient.http`` expects.

A real server (engine + HTTP frontend) runs on an ephemeral port over the Triton Python-backend
test repository; clients are the real ``tritonclient.http`` and raw ``httpx``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve.engine import Server, ServerOptions
from dagserve.frontends.http import serve_http
from dagserve.frontends.http_codec import decode_infer_request, encode_infer_response
from dagserve.testing import serve_in_thread
from dagserve.types import DataType, InferRequest, InferResponse, RequestedOutput

REPO = Path(__file__).parent.parent / "repos" / "triton_python"
ADD_SUB = "add_sub"
BYTES_MODEL = "string_case"  # TEXT BYTES [-1] -> UPPER BYTES, LENGTH INT32; max_batch_size 8
BATCHED = "batched_scale"  # X FP32 [3] -> Y = 2X, BATCH; max_batch_size 8


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(REPO, grpc=False, metrics=False) as running:
        yield running.http_url


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(url) as c:
        yield c


@pytest.fixture()
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{url}", timeout=60) as c:
        yield c


def _add_sub_inputs(a: np.ndarray, b: np.ndarray, *, binary: bool) -> list[httpclient.InferInput]:
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


A = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
B = np.array([0.5, 0.25, 2.0, -1.0], dtype=np.float32)


# ---------------------------------------------------------------------- health & metadata


def test_health_routes_answer_200_with_empty_body(http: httpx.Client, client: Any) -> None:
    """Live and ready probes answer 200 with no body; tritonclient reads them as true."""
    for path in ("/v2/health/live", "/v2/health/ready"):
        r = http.get(path)
        assert r.status_code == 200
        assert r.content == b""
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata_lists_extensions(client: Any) -> None:
    """GET /v2 names the server and the binary tensor data extension."""
    meta = client.get_server_metadata()
    assert meta["name"]
    assert isinstance(meta["version"], str)
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_plain_and_versioned(client: Any) -> None:
    """Model metadata has KServe's tensor signatures, with or without a version segment."""
    meta = client.get_model_metadata(ADD_SUB)
    assert meta["name"] == ADD_SUB
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert meta["inputs"][0]["shape"] == [4]
    assert {o["name"] for o in meta["outputs"]} == {"OUTPUT0", "OUTPUT1"}
    version = meta["versions"][0]
    assert client.get_model_metadata(ADD_SUB, version)["name"] == ADD_SUB


def test_model_ready_config_and_stats(client: Any) -> None:
    """Model ready, config and statistics routes answer in Triton's JSON shapes."""
    assert client.is_model_ready(ADD_SUB)
    assert client.is_model_ready(ADD_SUB, "1")
    config = client.get_model_config(ADD_SUB)
    assert config["name"] == ADD_SUB
    stats = client.get_inference_statistics(ADD_SUB)
    assert [s["name"] for s in stats["model_stats"]] == [ADD_SUB]
    everything = client.get_inference_statistics()
    assert ADD_SUB in {s["name"] for s in everything["model_stats"]}
    assert client.get_inference_statistics(ADD_SUB, "1")["model_stats"]


def test_repository_index_with_and_without_body(client: Any, http: httpx.Client) -> None:
    """POST /v2/repository/index works with no body and with {"ready": true}."""
    index = client.get_model_repository_index()
    assert ADD_SUB in {m["name"] for m in index}
    r = http.post("/v2/repository/index", json={"ready": True})
    assert r.status_code == 200
    assert all(m["state"] == "READY" for m in r.json())


def test_load_and_unload_round_trip() -> None:
    """Unloading a model makes it unavailable to inference; loading it again restores it."""
    with (
        serve_in_thread(
            REPO, grpc=False, metrics=False, model_control_mode="explicit", load_models=("*",)
        ) as running,
        httpclient.InferenceServerClient(running.http_url) as c,
    ):
        c.unload_model(ADD_SUB)
        assert not c.is_model_ready(ADD_SUB)
        with pytest.raises(httpclient.InferenceServerException) as info:
            c.infer(ADD_SUB, _add_sub_inputs(A, B, binary=True))
        assert info.value.status() == "404"
        c.load_model(ADD_SUB)
        assert c.is_model_ready(ADD_SUB)
        result = c.infer(ADD_SUB, _add_sub_inputs(A, B, binary=True))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
        c.unload_model(ADD_SUB)
        assert not c.is_model_ready(ADD_SUB)
        # The load request's parameters reach the engine: a config override that cannot
        # parse is refused, and the model loads again without it.
        with pytest.raises(httpclient.InferenceServerException) as info:
            c.load_model(ADD_SUB, config="{not json")
        assert info.value.status() == "400"
        c.load_model(ADD_SUB)
        assert c.is_model_ready(ADD_SUB)


def test_unload_dependents_unloads_a_pipelines_members() -> None:
    """Unloading a pipeline with ``unload_dependents`` also unloads the models it uses."""
    with (
        serve_in_thread(
            REPO.parent / "pipelines", grpc=False, metrics=False, model_control_mode="explicit",
            load_models=("sleepy", "adder", "branches"),
        ) as running,
        httpclient.InferenceServerClient(running.http_url) as c,
    ):
        assert all(c.is_model_ready(m) for m in ("sleepy", "adder", "branches"))
        c.unload_model("branches", unload_dependents=True)
        assert [c.is_model_ready(m) for m in ("branches", "sleepy", "adder")] == [False, False, False]


# ------------------------------------------------------------------------------- infer


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_add_sub_json_and_binary(client: Any, binary_in: bool, binary_out: bool) -> None:
    """add_sub answers right whichever of JSON and binary carries inputs and outputs."""
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary_out),
    ]
    result = client.infer(ADD_SUB, _add_sub_inputs(A, B, binary=binary_in), outputs=outputs, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    response = result.get_response()
    assert response["id"] == "r-1"
    assert response["model_name"] == ADD_SUB
    assert response["model_version"] == "1"
    out0 = result.get_output("OUTPUT0")
    assert out0["datatype"] == "FP32"
    assert out0["shape"] == [4]
    assert ("data" in out0) is (not binary_out)


def test_no_outputs_requested_returns_all_binary(client: Any) -> None:
    """Asking for no outputs returns every output (tritonclient then asks for binary)."""
    result = client.infer(ADD_SUB, _add_sub_inputs(A, B, binary=True), model_version="1")
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert sorted(names) == ["OUTPUT0", "OUTPUT1"]
    assert "binary_data_size" in result.get_output("OUTPUT1")["parameters"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def test_subset_of_outputs(client: Any) -> None:
    """Only the requested outputs come back."""
    result = client.infer(
        ADD_SUB, _add_sub_inputs(A, B, binary=False), outputs=[httpclient.InferRequestedOutput("OUTPUT1")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def test_mixed_binary_and_json_outputs(client: Any) -> None:
    """One output binary and one JSON in the same response decode correctly."""
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
    ]
    result = client.infer(ADD_SUB, _add_sub_inputs(A, B, binary=True), outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1", "OUTPUT0"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_model(client: Any, binary: bool) -> None:
    """BYTES tensors round-trip as length-prefixed binary and as JSON strings."""
    text = np.array([[b"hello", "wörld".encode(), b""]], dtype=np.object_)
    inp = httpclient.InferInput("TEXT", [1, 3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("UPPER", binary_data=binary),
        httpclient.InferRequestedOutput("LENGTH", binary_data=binary),
    ]
    result = client.infer(BYTES_MODEL, [inp], outputs=outputs)
    upper = result.as_numpy("UPPER")
    assert upper.shape == (1, 3)
    if binary:
        assert list(upper[0]) == [b"HELLO", "WöRLD".encode(), b""]
    else:
        assert result.get_output("UPPER")["data"] == ["HELLO", "WöRLD", ""]
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [[5, 6, 0]])


def test_non_utf8_bytes_output_falls_back_to_binary(http: httpx.Client) -> None:
    """A BYTES output that is not UTF-8 is sent binary even when JSON was asked for."""
    blob = b"\xff\xfe\x00"
    raw = struct.pack("<I", len(blob)) + blob
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "UPPER", "parameters": {"binary_data": False}},
                {"name": "LENGTH", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    r = http.post(
        f"/v2/models/{BYTES_MODEL}/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    result = httpclient.InferResult.from_response_body(
        r.content, header_length=int(r.headers["Inference-Header-Content-Length"])
    )
    assert result.as_numpy("UPPER").tolist() == [[blob]]
    assert result.get_output("LENGTH")["data"] == [3]


def test_batched_model(client: Any) -> None:
    """A batching model takes a [batch, 3] tensor and answers per row."""
    batch = np.arange(9, dtype=np.float32).reshape(3, 3)
    inp = httpclient.InferInput("X", [3, 3], "FP32")
    inp.set_data_from_numpy(batch)
    result = client.infer(BATCHED, [inp], outputs=[httpclient.InferRequestedOutput("Y")])
    np.testing.assert_array_equal(result.as_numpy("Y"), batch * 2)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_and_response(url: str, algorithm: str) -> None:
    """tritonclient's request and response compression both work: the server reads the
    compressed request and answers a compressed response (its Content-Encoding says so),
    which tritonclient decodes."""
    strings = np.array([[b"x" * 100] * 20], dtype=np.object_)  # a response worth compressing
    inp = httpclient.InferInput("TEXT", [1, 20], "BYTES")
    inp.set_data_from_numpy(strings)
    encodings: list[str | None] = []
    with httpclient.InferenceServerClient(url) as c:
        post = c._post

        def recording_post(*args: Any, **kwargs: Any) -> Any:
            response = post(*args, **kwargs)
            encodings.append(response.get("Content-Encoding"))
            return response

        c._post = recording_post  # type: ignore[method-assign]
        result = c.infer(
            BYTES_MODEL, [inp], request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
        )
    assert encodings == [algorithm]
    assert result.as_numpy("UPPER").tolist() == [[b"X" * 100] * 20]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_large_response_is_compressed_when_accepted(http: httpx.Client, algorithm: str) -> None:
    """A response big enough to be worth it is compressed per Accept-Encoding."""
    strings = ["x" * 100] * 20
    body = {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 20], "data": strings}],
        "outputs": [{"name": "UPPER"}],
    }
    r = http.post(
        f"/v2/models/{BYTES_MODEL}/infer",
        content=json.dumps(body).encode(),
        headers={"Accept-Encoding": algorithm},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-encoding"] == algorithm
    assert int(r.headers["content-length"]) < len(r.content)  # httpx decoded the body
    assert json.loads(r.content)["outputs"][0]["data"] == [s.upper() for s in strings]


def test_json_nested_data_and_plain_response(http: httpx.Client) -> None:
    """JSON-only requests may nest data by shape; the response is pure JSON."""
    body = {
        "id": "nested",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": [1, 1, 1, 1]},
        ],
    }
    r = http.post(f"/v2/models/{ADD_SUB}/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    doc = r.json()
    assert doc["id"] == "nested"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["OUTPUT0"]["data"] == [2.0, 3.0, 4.0, 5.0]
    batch = {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}],
        "outputs": [{"name": "Y"}],
    }
    r = http.post(f"/v2/models/{BATCHED}/infer", json=batch)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] == {
        "name": "Y",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0],
    }


def test_raw_binary_request(http: httpx.Client) -> None:
    """Inference-Header-Content-Length 0 sends one input's raw bytes; the batch is inferred."""
    batch = np.arange(6, dtype=np.float32).reshape(2, 3)
    r = http.post(
        f"/v2/models/{BATCHED}/infer",
        content=batch.tobytes(),
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["Y"]["shape"] == [2, 3]
    assert out["Y"]["data"] == (batch * 2).reshape(-1).tolist()


def test_versioned_routes(client: Any) -> None:
    """/versions/{v}/ routes reach that version; without one the newest ready version answers."""
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([0], dtype=np.int32))
    assert client.infer("versioned", [inp], model_version="1").as_numpy("VERSION").tolist() == [1]
    result = client.infer("versioned", [inp])
    assert result.as_numpy("VERSION").tolist() == [3]
    assert result.get_response()["model_version"] == "3"
    assert client.is_model_ready("versioned", "3")
    assert sorted(client.get_model_metadata("versioned")["versions"]) == ["1", "3"]
    assert client.get_model_config("versioned", "1")["name"] == "versioned"


# ----------------------------------------------------------------- codec, no server needed


def _binary_request(
    inputs: list[tuple[str, str, list[int], bytes]], **extra: Any
) -> tuple[bytes, memoryview]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
            for n, d, s, raw in inputs
        ],
        **extra,
    }
    return json.dumps(header).encode(), memoryview(b"".join(raw for *_, raw in inputs))


def test_codec_binary_inputs_are_zero_copy_views() -> None:
    """Binary numeric inputs are numpy views on the body, not copies."""
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    header, binary = _binary_request([("X", "INT64", [2, 3], a.tobytes())])
    request = decode_infer_request(header, binary)
    x = request.inputs["X"]
    np.testing.assert_array_equal(x, a)
    assert not x.flags.owndata
    assert np.shares_memory(x, np.frombuffer(binary, dtype=np.uint8))
    assert not x.flags.writeable


def test_codec_json_inputs_are_read_only_too() -> None:
    """JSON inputs are read-only like binary ones, so models see the same thing either way."""
    header = json.dumps(
        {"inputs": [{"name": "X", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    )
    x = decode_infer_request(header.encode(), memoryview(b"")).inputs["X"]
    np.testing.assert_array_equal(x, [[1, 2], [3, 4]])
    assert x.dtype == np.int32
    assert not x.flags.writeable


def test_codec_fp16_bf16_bool_round_trip() -> None:
    """FP16, BF16 (as uint16 bits) and BOOL decode from binary and encode both ways."""
    half = np.array([1.5, -2.0], dtype=np.float16)
    bf16 = (np.array([1.0, -3.5], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    flags = np.array([True, False, True])
    header, binary = _binary_request(
        [
            ("H", "FP16", [2], half.tobytes()),
            ("B", "BF16", [2], bf16.tobytes()),
            ("F", "BOOL", [3], flags.tobytes()),
        ]
    )
    request = decode_infer_request(header, binary)
    assert request.datatype("B") is DataType.BF16
    assert request.datatype("H") is DataType.FP16
    np.testing.assert_array_equal(request.inputs["F"], flags)

    response = InferResponse(
        model_name="m",
        model_version="1",
        outputs=dict(request.inputs),
        datatypes={"H": DataType.FP16, "B": DataType.BF16, "F": DataType.BOOL},
    )
    body, header_len = encode_infer_response(response, InferRequest(inputs={}))
    assert header_len is None
    doc = json.loads(body)
    data = {o["name"]: o["data"] for o in doc["outputs"]}
    assert data == {"H": [1.5, -2.0], "B": [1.0, -3.5], "F": [True, False, True]}

    binary_request = InferRequest(inputs={}, parameters={"binary_data_output": True})
    body, header_len = encode_infer_response(response, binary_request)
    assert header_len is not None
    result = httpclient.InferResult.from_response_body(body, header_length=header_len)
    np.testing.assert_array_equal(result.as_numpy("H"), half)
    np.testing.assert_array_equal(result.as_numpy("B"), np.array([1.0, -3.5], dtype=np.float32))
    np.testing.assert_array_equal(result.as_numpy("F"), flags)


def test_codec_requested_output_binary_flag_overrides_request_default() -> None:
    """A per-output binary_data=false wins over binary_data_output=true."""
    response = InferResponse(
        model_name="m", model_version="1", outputs={"Y": np.arange(3, dtype=np.int32)}, datatypes={}
    )
    request = InferRequest(
        inputs={},
        parameters={"binary_data_output": True},
        outputs=(RequestedOutput(name="Y", parameters={"binary_data": False}),),
    )
    body, header_len = encode_infer_response(response, request)
    assert header_len is None
    assert json.loads(body)["outputs"][0] == {
        "name": "Y",
        "datatype": "INT32",
        "shape": [3],
        "data": [0, 1, 2],
    }


def test_accepted_connections_disable_nagle(url: str) -> None:
    """The server's side of each connection has TCP_NODELAY, so an answer written in pieces
    (head, then body) is not held back for the client's delayed ACK (40 ms per request).

    The server runs in this process, so its accepted socket is found among our own file
    descriptors (Linux /proc) by its address pair. Latency itself is measured in bench/.
    """
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as client_side:
        client_side.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client_side.recv(4096).startswith(b"HTTP/1.1 200")
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                candidate = socket.socket(fileno=os.dup(int(fd)))
            except OSError:
                continue  # not a socket
            with candidate:
                try:
                    if candidate.type != socket.SOCK_STREAM or candidate.family != socket.AF_INET:
                        continue
                    if candidate.getpeername() != client_side.getsockname():
                        continue
                except OSError:
                    continue  # a listening or unconnected socket
                found.append(candidate.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    assert found and all(found)


@pytest.mark.anyio
async def test_serve_http_reports_its_port_and_stops_on_cancel() -> None:
    """serve_http binds port 0, reports the real port, and closes it when cancelled."""
    async with Server(ServerOptions(model_repository=REPO, model_control_mode="explicit")) as server:
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                functools.partial(serve_http, server, host="127.0.0.1", port=0, max_body_size=1024)
            )
            assert port > 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                assert (await c.get("/v2/health/live")).status_code == 200
                meta = (await c.get("/v2")).json()
                assert meta["name"] == server.name
            tg.cancel_scope.cancel()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                await c.get("/v2/health/live")


@pytest.mark.anyio
async def test_asyncio_tritonclient(url: str) -> None:
    """tritonclient.http.aio (aiohttp) works too, binary both ways and compressed."""
    import tritonclient.http.aio as aioclient

    async with aioclient.InferenceServerClient(url) as c:
        assert await c.is_server_ready()
        inputs = [aioclient.InferInput("INPUT0", [4], "FP32"), aioclient.InferInput("INPUT1", [4], "FP32")]
        inputs[0].set_data_from_numpy(A)
        inputs[1].set_data_from_numpy(B)
        result = await c.infer(ADD_SUB, inputs, request_compression_algorithm="gzip")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
        stats = await c.get_inference_statistics(ADD_SUB)
        assert stats["model_stats"][0]["name"] == ADD_SUB
