"""Every bad HTTP request gets a clear ``{"error": ...}`` with the right status, and the server
keeps answering good requests afterwards.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve.errors import InvalidInputError
from dagserve.frontends.http_codec import decode_infer_request
from dagserve.testing import serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "triton_python"
ADD_SUB = "add_sub"
BATCHED = "batched_scale"  # X FP32 [3]; max_batch_size 8
BATCHED_MAX = 8
RAISER = "raiser"  # MODE INT32 [1]: 1 raises ValueError("secret internal detail"), 2 returns a TritonError
WRONG_OUTPUTS = "wrong_outputs"  # MODE INT32 [1]: 1 missing, 2 wrong dtype, 3 wrong shape, 4 extra, 5 none
LIMIT = 256 * 1024

A = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
B = np.array([0.5, 0.25, 2.0, -1.0], dtype=np.float32)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(REPO, grpc=False, metrics=False, http_max_body_size=LIMIT) as running:
        yield running.http_url


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(url) as c:
        yield c


@pytest.fixture()
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{url}", timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def still_serves(url: str) -> Iterator[None]:
    """After each bad request, a good one on a fresh connection still gets the right answer."""
    yield
    with httpclient.InferenceServerClient(url) as c:
        result = c.infer(ADD_SUB, _add_sub_inputs())
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def _add_sub_inputs() -> list[httpclient.InferInput]:
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_data_from_numpy(B)
    return inputs


def _json_input(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


GOOD_INPUTS = [
    _json_input("INPUT0", "FP32", [4], [1, 2, 3, 4]),
    _json_input("INPUT1", "FP32", [4], [1, 1, 1, 1]),
]


def _error(response: httpx.Response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str)
    for needle in needles:
        assert needle in message, message
    return message


def _infer(http: httpx.Client, body: Any, model: str = ADD_SUB, **kwargs: Any) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", content=json.dumps(body).encode(), **kwargs)


# ------------------------------------------------------------------- model / route lookup


def test_unknown_model_is_404(http: httpx.Client, client: Any) -> None:
    """Unknown models answer 404 on infer, metadata, config and stats; ready answers 400, as
    Triton's (its core says "not ready" for a model it does not know)."""
    _error(_infer(http, {"inputs": GOOD_INPUTS}, model="nope"), 404, "nope")
    for suffix in ("", "/config", "/stats"):
        _error(http.get(f"/v2/models/nope{suffix}"), 404, "nope")
    _error(http.get("/v2/models/nope/ready"), 400, "nope")
    with pytest.raises(httpclient.InferenceServerException) as info:
        client.infer("nope", _add_sub_inputs())
    assert info.value.status() == "404"
    assert not client.is_model_ready("nope")


def test_unknown_version_is_404(http: httpx.Client) -> None:
    """A version the model does not serve answers 404 (its ready route 400, as Triton); a
    non-numeric one 400."""
    _error(http.post(f"/v2/models/{ADD_SUB}/versions/99/infer", json={"inputs": GOOD_INPUTS}), 404, "99")
    _error(http.get("/v2/models/versioned/versions/2"), 404, "2")
    _error(http.get("/v2/models/versioned/versions/2/ready"), 400)
    _error(http.get(f"/v2/models/{ADD_SUB}/versions/latest/config"), 400, "latest")


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    """An unknown path is a JSON 404; a known path with the wrong method is a JSON 405."""
    _error(http.get("/v2/nothing/here"), 404)
    _error(http.get(f"/v2/models/{ADD_SUB}/infer"), 405)
    _error(http.post("/v2/health/live"), 405)


def test_repository_errors(http: httpx.Client) -> None:
    """Repository routes reject unknown models and malformed bodies."""
    # This server runs with model control mode "none": load and unload are refused.
    _error(http.post(f"/v2/repository/models/{ADD_SUB}/load"), 501, "explicit")
    _error(http.post(f"/v2/repository/models/{ADD_SUB}/unload"), 501, "explicit")
    _error(http.post("/v2/repository/index", content=b"{not json"), 400, "JSON")
    _error(http.post("/v2/repository/index", json={"ready": "yes"}), 400, "ready")
    _error(
        http.post(f"/v2/repository/models/{ADD_SUB}/unload", json={"parameters": {"unload_dependents": 1}}),
        400,
        "unload_dependents",
    )
    _error(http.post(f"/v2/repository/models/{ADD_SUB}/load", json={"parameters": []}), 400, "parameters")


# ------------------------------------------------------------------- inputs vs the model


def test_missing_input(http: httpx.Client) -> None:
    """A missing input is a 400 naming it."""
    _error(_infer(http, {"inputs": GOOD_INPUTS[:1]}), 400, "INPUT1")


def test_extra_input(http: httpx.Client) -> None:
    """An input the model does not have is a 400 naming it."""
    body = {"inputs": [*GOOD_INPUTS, _json_input("INPUT9", "FP32", [4], [0, 0, 0, 0])]}
    _error(_infer(http, body), 400, "INPUT9")


def test_duplicate_input(http: httpx.Client) -> None:
    """The same input twice is a 400."""
    _error(_infer(http, {"inputs": [*GOOD_INPUTS, GOOD_INPUTS[0]]}), 400, "INPUT0")


def test_wrong_datatype(http: httpx.Client, client: Any) -> None:
    """An input of the wrong datatype is a 400 naming it, over JSON and binary."""
    body = {"inputs": [_json_input("INPUT0", "INT32", [4], [1, 2, 3, 4]), GOOD_INPUTS[1]]}
    _error(_infer(http, body), 400, "INPUT0", "INT32")
    inputs = [httpclient.InferInput("INPUT0", [4], "FP64"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(A.astype(np.float64))
    inputs[1].set_data_from_numpy(B)
    with pytest.raises(httpclient.InferenceServerException) as info:
        client.infer(ADD_SUB, inputs)
    assert info.value.status() == "400"
    assert "INPUT0" in info.value.message()


def test_unknown_datatype(http: httpx.Client) -> None:
    """A datatype name that does not exist is a 400."""
    body = {"inputs": [_json_input("INPUT0", "FLOAT", [4], [1, 2, 3, 4]), GOOD_INPUTS[1]]}
    _error(_infer(http, body), 400, "INPUT0", "FLOAT")


def test_wrong_shape(http: httpx.Client) -> None:
    """A shape the model does not accept is a 400 naming the input."""
    body = {"inputs": [_json_input("INPUT0", "FP32", [2, 2], [1, 2, 3, 4]), GOOD_INPUTS[1]]}
    _error(_infer(http, body), 400, "INPUT0")


def test_element_count_not_matching_shape(http: httpx.Client) -> None:
    """JSON data with more or fewer elements than the shape is a 400."""
    for data in ([1, 2, 3], [1, 2, 3, 4, 5], [[1, 2], [3]]):
        body = {"inputs": [_json_input("INPUT0", "FP32", [4], data), GOOD_INPUTS[1]]}
        _error(_infer(http, body), 400, "INPUT0")


def test_huge_and_negative_dimensions(http: httpx.Client) -> None:
    """Shapes like [2147483648], [2**40, 2**40] or [-1] are a 400 naming the input, never an
    allocation (which would fail as a 500 MemoryError or take the process down)."""
    for shape in ([2147483648], [2**40, 2**40], [-1], [4, -4], ["4"], [True, 4], 4):
        body = {"inputs": [_json_input("INPUT0", "FP32", shape, [1, 2, 3, 4]), GOOD_INPUTS[1]]}
        _error(_infer(http, body), 400, "INPUT0")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "BYTES",
                    "shape": [2**31],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    _error(
        http.post(
            f"/v2/models/{ADD_SUB}/infer",
            content=header + b"\x00" * 8,
            headers={"Inference-Header-Content-Length": str(len(header))},
        ),
        400,
        "INPUT0",
    )


def test_batch_larger_than_max_batch_size(http: httpx.Client) -> None:
    """A batch over max_batch_size is a 400."""
    rows = BATCHED_MAX + 1
    body = {"inputs": [_json_input("X", "FP32", [rows, 3], [0.0] * rows * 3)]}
    _error(_infer(http, body, model=BATCHED), 400, "max_batch_size")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (["1", "2", "3", "4"], "strings"),
        ([1, 2, None, 4], "null"),
        ([1, 2, {"a": 1}, 4], "object"),
        ([True, False, True, False], "bools"),
    ],
)
def test_wrong_json_types(http: httpx.Client, data: list[Any], what: str) -> None:
    """JSON data of the wrong type for an FP32 input is a 400 naming the input."""
    body = {"inputs": [_json_input("INPUT0", "FP32", [4], data), GOOD_INPUTS[1]]}
    _error(_infer(http, body), 400, "INPUT0")


def test_requested_output_that_does_not_exist(http: httpx.Client) -> None:
    """Asking for an output the model does not have is a 400 naming it."""
    body = {"inputs": GOOD_INPUTS, "outputs": [{"name": "OUTPUT7"}]}
    _error(_infer(http, body), 400, "OUTPUT7")


# ------------------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "JSON"),
        (b"", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"inputs": 3}', "inputs"),
        (b'{"id": 5, "inputs": []}', "id"),
        (b'{"inputs": [{"datatype": "FP32", "shape": [4], "data": [1,2,3,4]}]}', "name"),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4]}]}', "INPUT0"),
        (b'{"inputs": [], "parameters": [1]}', "parameters"),
        (b'{"inputs": [], "outputs": {"name": "x"}}', "outputs"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
    ],
)
def test_malformed_json(http: httpx.Client, body: bytes, needle: str) -> None:
    """Malformed or mistyped request JSON is a 400 that names the problem."""
    _error(http.post(f"/v2/models/{ADD_SUB}/infer", content=body), 400, needle)


def _binary_body(sizes: list[int], payload: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {"name": f"INPUT{i}", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": s}}
                for i, s in enumerate(sizes)
            ]
        }
    ).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("sizes", "payload", "needle"),
    [
        ([16, 16], A.tobytes(), "INPUT1"),  # second input's bytes missing
        ([16, 16], A.tobytes() + B.tobytes() + b"xx", "2 bytes"),  # trailing bytes
        ([12, 20], A.tobytes() + B.tobytes(), "INPUT0"),  # sizes add up, but not to the shapes
        ([16, -1], A.tobytes() + B.tobytes(), "INPUT1"),
    ],
)
def test_binary_sizes_that_do_not_add_up(
    http: httpx.Client, sizes: list[int], payload: bytes, needle: str
) -> None:
    """Binary data sizes that disagree with the body or the shapes are a 400."""
    content, headers = _binary_body(sizes, payload)
    _error(http.post(f"/v2/models/{ADD_SUB}/infer", content=content, headers=headers), 400, needle)


@pytest.mark.parametrize("value", ["100000", "-3", "abc"])
def test_bad_inference_header_length(http: httpx.Client, value: str) -> None:
    """An Inference-Header-Content-Length that does not fit the body is a 400."""
    content, _ = _binary_body([16, 16], A.tobytes() + B.tobytes())
    r = http.post(
        f"/v2/models/{ADD_SUB}/infer", content=content, headers={"Inference-Header-Content-Length": value}
    )
    _error(r, 400, "Inference-Header-Content-Length")


def test_bad_content_encoding(http: httpx.Client) -> None:
    """A corrupt gzip body is a 400; an unknown encoding is 501."""
    r = http.post(f"/v2/models/{ADD_SUB}/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    _error(r, 400, "gzip")
    truncated = gzip.compress(json.dumps({"inputs": GOOD_INPUTS}).encode())[:-10]
    _error(
        http.post(f"/v2/models/{ADD_SUB}/infer", content=truncated, headers={"Content-Encoding": "gzip"}), 400
    )
    r = http.post(f"/v2/models/{ADD_SUB}/infer", content=b"{}", headers={"Content-Encoding": "br"})
    _error(r, 501, "br")


def test_body_over_limit_is_413(http: httpx.Client) -> None:
    """A body declared larger than the limit is refused with 413 before it is read."""
    r = http.post(f"/v2/models/{ADD_SUB}/infer", content=b"x" * (LIMIT + 1))
    _error(r, 413, str(LIMIT))
    assert r.headers["connection"] == "close"


def test_chunked_body_over_limit_is_413(url: str) -> None:
    """A chunked body is cut off with 413 as soon as it passes the limit."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST /v2/models/{ADD_SUB}/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"x" * 65536
        sent = 0
        while sent <= LIMIT:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        response = b""
        while b"\r\n\r\n" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


def test_gzip_bomb_is_413(http: httpx.Client) -> None:
    """A small gzip body that inflates past the limit is a 413, not a large allocation."""
    bomb = gzip.compress(b" " * (LIMIT * 8))
    assert len(bomb) < LIMIT
    r = http.post(f"/v2/models/{ADD_SUB}/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    _error(r, 413)


# -------------------------------------------------------------------------- model failures


def _mode(mode: int) -> dict[str, Any]:
    return {"inputs": [_json_input("MODE", "INT32", [1], [mode])]}


def test_execute_raises_is_500_with_the_models_message(http: httpx.Client, client: Any) -> None:
    """A model whose execute raises answers 500 with Triton's message (the exception's type and
    text); the traceback stays in the server log."""
    r = _infer(http, _mode(1), model=RAISER)
    message = _error(r, 500)
    assert message.startswith("Failed to process the request(s) for model 'raiser_0_0', message: ValueError: secret")
    assert "Traceback" not in message and "model.py" not in message
    inp = httpclient.InferInput("MODE", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(httpclient.InferenceServerException) as info:
        client.infer(RAISER, [inp])
    assert info.value.status() == "500"


def test_model_reported_error_keeps_its_message(http: httpx.Client) -> None:
    """A TritonError the model returns reaches the client with its own message."""
    r = _infer(http, _mode(2), model=RAISER)
    assert r.status_code == 400  # the model's TritonError code is INVALID_ARG
    assert r.json()["error"] == "MODE 2 is not allowed"


@pytest.mark.parametrize("mode", [1, 2, 3, 4, 5])
def test_wrong_outputs_is_500(http: httpx.Client, mode: int) -> None:
    """A model answering with missing, mistyped, misshapen, extra or no outputs answers 500."""
    _error(_infer(http, _mode(mode), model=WRONG_OUTPUTS), 500, WRONG_OUTPUTS)


# ----------------------------------------------------------------- codec-only edge cases


@pytest.mark.parametrize(
    ("datatype", "data", "needle"),
    [
        ("INT8", [1, 300], "out of range"),
        ("UINT32", [-1, 2], "out of range"),
        ("INT64", [1.5, 2], "integers"),
        ("INT64", [2**64, 1], "integers"),
        ("BOOL", [1, 0], "true/false"),
        ("FP16", [1.0, 2.0], "binary"),
        ("BF16", [1.0, 2.0], "binary"),
        ("BYTES", ["a", 3], "strings"),
    ],
)
def test_codec_rejects_json_values_for_type(datatype: str, data: list[Any], needle: str) -> None:
    """JSON values that do not fit the declared datatype are rejected by name, never cast."""
    header = json.dumps({"inputs": [_json_input("X", datatype, [2], data)]}).encode()
    with pytest.raises(InvalidInputError, match=needle) as info:
        decode_infer_request(header, memoryview(b""))
    assert "'X'" in str(info.value)


def test_codec_rejects_truncated_bytes_element() -> None:
    """A BYTES element whose length prefix overruns its data is rejected."""
    raw = struct.pack("<I", 10) + b"abc"
    header = json.dumps(
        {
            "inputs": [
                {"name": "S", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    ).encode()
    with pytest.raises(InvalidInputError, match="'S'"):
        decode_infer_request(header, memoryview(raw))
