"""Triton's classification extension over HTTP (JSON and binary outputs) and gRPC, asked with
the stock tritonclient's ``class_count``: top-k ``"value:index[:label]"`` per batch item, labels
from ``label_filename`` (a pipeline's outputs inherit its members'), and clear 400 /
INVALID_ARGUMENT errors for what cannot be classified, each followed by a good request."""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

SCORES_YAML = """\
backend: python
max_batch_size: 8
inputs: [{name: X, datatype: FP32, shape: [4]}]
outputs:
  - {name: PROB, datatype: FP32, shape: [4], label_filename: labels.txt}
  - {name: COUNTS, datatype: INT32, shape: [4]}
  - {name: NAME, datatype: BYTES, shape: [1]}
  - {name: FLAG, datatype: BOOL, shape: [4]}
"""
SCORES_PY = """\
import numpy as np

def infer(inputs):
    x = inputs["X"]
    return {
        "PROB": x,
        "COUNTS": (x * 10).astype(np.int32),
        "NAME": np.array([[b"n"]] * len(x), dtype=object),
        "FLAG": x > 0.5,
    }
"""
# A model that does not batch: the whole [2, 3] tensor is one item, indices are flat.
WHOLE_YAML = """\
backend: python
inputs: [{name: X, datatype: FP32, shape: [2, 3]}]
outputs: [{name: PROB, datatype: FP64, shape: [2, 3], label_filename: sub/labels.txt}]
"""
WHOLE_PY = """\
import numpy as np

def infer(inputs):
    return {"PROB": inputs["X"].astype(np.float64)}
"""
PIPE_YAML = """\
backend: pipeline
max_batch_size: 8
inputs: [{name: X, datatype: FP32, shape: [4]}]
outputs:
  - {name: SCORES, datatype: FP32, shape: [4]}
  - {name: OWN, datatype: FP32, shape: [4], label_filename: own.txt}
pipeline:
  steps:
    - {name: s, model: scores, inputs: {X: X}}
  outputs:
    SCORES: s.PROB
    OWN: s.PROB
"""
ENSEMBLE_PBTXT = """\
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ {
  model_name: "scores" model_version: -1
  input_map { key: "X" value: "IN" }
  output_map { key: "PROB" value: "OUT" }
} ] }
"""
# labels.txt: class 2 has an empty line (no label), class 3 has no line at all.
LABELS = "cat\ndog\n\n"
X = np.array([[0.1, 0.9, 0.5, 0.3], [0.8, 0.1, 0.2, 0.7]], dtype=np.float32)
TOP2 = [[b"0.900000:1:dog", b"0.500000:2"], [b"0.800000:0:cat", b"0.700000:3"]]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("classification")
    _write(root, {
        "scores/config.yaml": SCORES_YAML, "scores/1/model.py": SCORES_PY, "scores/labels.txt": LABELS,
        "whole/config.yaml": WHOLE_YAML, "whole/1/model.py": WHOLE_PY,
        "whole/sub/labels.txt": "a\r\nb\r\nc\r\nd\r\ne\r\nf\r\n",
        "pipe/config.yaml": PIPE_YAML, "pipe/own.txt": "w\nx\ny\nz\n",
        "ens/config.pbtxt": ENSEMBLE_PBTXT, "ens/1/.keep": "",
        "missing_labels/config.yaml": SCORES_YAML, "missing_labels/1/model.py": SCORES_PY,
        "escaping_labels/config.yaml": SCORES_YAML.replace("labels.txt", "../scores/labels.txt"),
        "escaping_labels/1/model.py": SCORES_PY,
    })
    with serve_in_thread(root, metrics=False) as server:
        yield server


def _http_infer(
    running: RunningServer, model: str, x: np.ndarray, outputs: list[httpclient.InferRequestedOutput], name: str = "X"
) -> httpclient.InferResult:
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with httpclient.InferenceServerClient(running.http_url) as client:
        return client.infer(model, [tensor], outputs=outputs)


def _grpc_infer(
    running: RunningServer, model: str, x: np.ndarray, outputs: list[grpcclient.InferRequestedOutput], name: str = "X"
) -> grpcclient.InferResult:
    tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        return client.infer(model, [tensor], outputs=outputs)


def _output_meta(result: Any, name: str) -> tuple[str, list[int]]:
    """(datatype, shape) of output ``name`` as the response declares it."""
    if isinstance(result, httpclient.InferResult):
        out = result.get_output(name)
        return out["datatype"], list(out["shape"])
    out = result.get_output(name)
    return out.datatype, list(out.shape)


Ask = Callable[[RunningServer, str, np.ndarray, dict[str, int]], Any]


def _ask_http_json(running: RunningServer, model: str, x: np.ndarray, counts: dict[str, int], name: str = "X") -> Any:
    outputs = [httpclient.InferRequestedOutput(o, binary_data=False, class_count=k) for o, k in counts.items()]
    return _http_infer(running, model, x, outputs, name)


def _ask_http_binary(running: RunningServer, model: str, x: np.ndarray, counts: dict[str, int], name: str = "X") -> Any:
    outputs = [httpclient.InferRequestedOutput(o, binary_data=True, class_count=k) for o, k in counts.items()]
    return _http_infer(running, model, x, outputs, name)


def _ask_grpc(running: RunningServer, model: str, x: np.ndarray, counts: dict[str, int], name: str = "X") -> Any:
    outputs = [grpcclient.InferRequestedOutput(o, class_count=k) for o, k in counts.items()]
    return _grpc_infer(running, model, x, outputs, name)


PROTOCOLS = {"http-json": _ask_http_json, "http-binary": _ask_http_binary, "grpc": _ask_grpc}
protocols = pytest.mark.parametrize("ask", list(PROTOCOLS.values()), ids=list(PROTOCOLS))


def _strings(array: np.ndarray) -> list[Any]:
    """The result as nested lists of bytes, however tritonclient decoded it (JSON BYTES may
    come back as str)."""
    return [[v.encode() if isinstance(v, str) else bytes(v) for v in row] for row in np.atleast_2d(array)]


@protocols
def test_batched_top_k_with_labels(running: RunningServer, ask: Ask) -> None:
    """Per batch item, the k largest values in descending order, labelled where the labels file
    has a non-empty line for the class; BYTES of shape [batch, k]."""
    result = ask(running, "scores", X, {"PROB": 2})
    assert _output_meta(result, "PROB") == ("BYTES", [2, 2])
    assert _strings(result.as_numpy("PROB")) == TOP2


@protocols
def test_k_larger_than_classes_returns_every_class(running: RunningServer, ask: Ask) -> None:
    """k past the number of classes gives all of them: shape [batch, classes]."""
    result = ask(running, "scores", X[:1], {"PROB": 1000})
    assert _output_meta(result, "PROB") == ("BYTES", [1, 4])
    assert _strings(result.as_numpy("PROB")) == [[b"0.900000:1:dog", b"0.500000:2", b"0.300000:3", b"0.100000:0:cat"]]


@protocols
def test_integer_output_values_are_plain_integers(running: RunningServer, ask: Ask) -> None:
    """An INT32 output without labels: "value:index", the value printed as an integer."""
    result = ask(running, "scores", X, {"COUNTS": 1})
    assert _strings(result.as_numpy("COUNTS")) == [[b"9:1"], [b"8:0"]]


@protocols
def test_unbatched_model_is_classified_as_a_whole(running: RunningServer, ask: Ask) -> None:
    """A model without batching: one item over every element (flat indices), shape [k]; the
    labels file in a subdirectory, with CRLF line ends, gives clean labels."""
    x = np.array([[0.5, 0.1, 0.7], [0.9, 0.2, 0.6]], dtype=np.float32)
    result = ask(running, "whole", x, {"PROB": 3})
    assert _output_meta(result, "PROB") == ("BYTES", [3])
    got = [v.encode() if isinstance(v, str) else v for v in result.as_numpy("PROB").tolist()]
    assert got == [b"0.900000:3:d", b"0.700000:2:c", b"0.600000:5:f"]


@protocols
def test_classified_and_raw_outputs_in_one_request(running: RunningServer, ask: Ask) -> None:
    """Only the outputs asked with a count are classified; the others come back as scores."""
    if ask is _ask_grpc:
        outputs: list[Any] = [grpcclient.InferRequestedOutput("PROB", class_count=1),
                              grpcclient.InferRequestedOutput("COUNTS")]
        result = _grpc_infer(running, "scores", X, outputs)
    else:
        binary = ask is _ask_http_binary
        outputs = [httpclient.InferRequestedOutput("PROB", binary_data=binary, class_count=1),
                   httpclient.InferRequestedOutput("COUNTS", binary_data=binary)]
        result = _http_infer(running, "scores", X, outputs)
    assert _strings(result.as_numpy("PROB")) == [[b"0.900000:1:dog"], [b"0.800000:0:cat"]]
    assert _output_meta(result, "COUNTS") == ("INT32", [2, 4])
    np.testing.assert_array_equal(result.as_numpy("COUNTS"), (X * 10).astype(np.int32))


@protocols
def test_pipeline_outputs_inherit_or_declare_labels(running: RunningServer, ask: Ask) -> None:
    """A pipeline output read from a member's output takes that member's labels; one with its
    own label_filename uses its own."""
    result = ask(running, "pipe", X, {"SCORES": 2, "OWN": 2})
    assert _strings(result.as_numpy("SCORES")) == TOP2
    assert _strings(result.as_numpy("OWN")) == [[b"0.900000:1:x", b"0.500000:2:y"], [b"0.800000:0:w", b"0.700000:3:z"]]


@protocols
def test_triton_ensemble_output_inherits_labels(running: RunningServer, ask: Ask) -> None:
    """A Triton ensemble (config.pbtxt) output mapped from a member's labelled output is
    labelled, as Triton's ensembles are."""
    result = ask(running, "ens", X, {"OUT": 2}, name="IN")
    assert _output_meta(result, "OUT") == ("BYTES", [2, 2])
    assert _strings(result.as_numpy("OUT")) == TOP2


def test_grpc_stream_classifies_each_response(running: RunningServer) -> None:
    """ModelStreamInfer honours class_count like ModelInfer."""
    responses: queue.Queue[Any] = queue.Queue()
    tensor = grpcclient.InferInput("X", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        try:
            client.async_stream_infer("scores", [tensor], outputs=[grpcclient.InferRequestedOutput("PROB", class_count=2)])
            result, error = responses.get(timeout=60)
        finally:
            client.stop_stream()
    assert error is None
    assert _strings(result.as_numpy("PROB")) == TOP2


def test_server_metadata_lists_the_extension(running: RunningServer) -> None:
    """Both protocols list "classification" among the server's extensions."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        assert "classification" in client.get_server_metadata()["extensions"]
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        assert "classification" in client.get_server_metadata().extensions


# ----------------------------------------------------------------------------- errors

def _raw_http(running: RunningServer, output: dict[str, Any]) -> httpx.Response:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4], "data": X.ravel().tolist()}],
            "outputs": [output]}
    with httpx.Client(timeout=60) as http:
        return http.post(f"http://{running.http_url}/v2/models/scores/infer", content=json.dumps(body))


def _good_request_still_works(running: RunningServer) -> None:
    assert _strings(_ask_http_json(running, "scores", X, {"PROB": 2}).as_numpy("PROB")) == TOP2
    assert _strings(_ask_grpc(running, "scores", X, {"PROB": 2}).as_numpy("PROB")) == TOP2


@pytest.mark.parametrize(("output", "datatype"), [("NAME", "BYTES"), ("FLAG", "BOOL")])
def test_unclassifiable_output_is_invalid_argument(running: RunningServer, output: str, datatype: str) -> None:
    """A BYTES or BOOL output asked for classification: 400 / INVALID_ARGUMENT naming the model,
    the output and its datatype; then a good request is answered."""
    expected = f"model 'scores': output '{output}' cannot be classified: its datatype is {datatype}"
    with pytest.raises(InferenceServerException) as http_error:
        _ask_http_json(running, "scores", X, {output: 1})
    assert http_error.value.status() == "400"
    assert expected in http_error.value.message()
    with pytest.raises(InferenceServerException) as grpc_error:
        _ask_grpc(running, "scores", X, {output: 1})
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert expected in grpc_error.value.message()
    _good_request_still_works(running)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3", None, [3]], ids=repr)
def test_http_count_that_is_not_a_positive_integer_is_400(running: RunningServer, value: Any) -> None:
    """classification must be a positive integer: 0, negatives, floats, booleans, strings, null
    and lists are a 400 naming the output; then a good request is answered."""
    reply = _raw_http(running, {"name": "PROB", "parameters": {"classification": value}})
    assert reply.status_code == 400, reply.text
    assert "output 'PROB': 'classification' must be a positive integer" in reply.json()["error"]
    _good_request_still_works(running)


@pytest.mark.parametrize("kind", ["negative", "string", "bool", "double"])
def test_grpc_count_that_is_not_a_positive_integer_is_invalid_argument(running: RunningServer, kind: str) -> None:
    """Over gRPC, a negative int64_param, or a string, bool or double parameter, is
    INVALID_ARGUMENT naming the output; then a good request is answered."""
    requested = grpcclient.InferRequestedOutput("PROB", class_count=-1 if kind == "negative" else 0)
    param = requested._get_tensor().parameters["classification"]
    if kind == "string":
        param.string_param = "3"
    elif kind == "bool":
        param.bool_param = True
    elif kind == "double":
        param.double_param = 3.0
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(running, "scores", X, [requested])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'PROB': 'classification' must be a positive integer" in info.value.message()
    _good_request_still_works(running)


def test_unknown_output_parameter_is_refused_on_both_protocols(running: RunningServer) -> None:
    """An output parameter dagserve does not know (a misspelt "clasification") is an error
    naming it, never silently ignored; then a good request is answered."""
    reply = _raw_http(running, {"name": "PROB", "parameters": {"clasification": 2}})
    assert reply.status_code == 400
    assert "output 'PROB': unknown parameter 'clasification'" in reply.json()["error"]
    requested = grpcclient.InferRequestedOutput("PROB")
    requested._get_tensor().parameters["clasification"].int64_param = 2
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(running, "scores", X, [requested])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'PROB': unknown parameter 'clasification'" in info.value.message()
    _good_request_still_works(running)


def test_bad_label_files_fail_the_load_with_the_reason(running: RunningServer) -> None:
    """A missing labels file, and one outside the model directory, fail that model's load with
    the output and the file named; the other models serve."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["scores"]["state"] == "READY"
        missing = index["missing_labels"]
        assert missing["state"] == "UNAVAILABLE"
        assert "model 'missing_labels': output 'PROB' label_filename" in missing["reason"]
        assert "does not exist" in missing["reason"]
        escaping = index["escaping_labels"]
        assert escaping["state"] == "UNAVAILABLE"
        assert "output 'PROB' label_filename" in escaping["reason"] and "'..'" in escaping["reason"]
