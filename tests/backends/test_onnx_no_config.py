"""An ONNX model directory without a config file is served as Triton serves it: the backend
comes from ``1/model.onnx`` and inputs, outputs and ``max_batch_size`` from the graph; with
``--disable-auto-complete-config`` it is refused. The model is built here with ``onnx.helper``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from dagserve.repository.loader import read_model
from dagserve.testing import serve_in_thread


def write_add_one(path: Path, *, batch: bool) -> None:
    """Y = X + 1, X and Y FP32 [batch?, 3]: the batch dimension symbolic when ``batch``."""
    first: str | int = "batch" if batch else 2
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [first, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [first, 3])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["X", "one"], ["Y"])], "add_one", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime dagserve supports
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_add_one(tmp_path / "models" / "add_one" / "1" / "model.onnx", batch=True)
    write_add_one(tmp_path / "models" / "add_one_fixed" / "1" / "model.onnx", batch=False)
    return tmp_path / "models"


def test_model_file_tells_the_backend(repo: Path) -> None:
    """No config file: the source is ONNX Runtime's, marked as generated; a directory with no
    model file Triton recognizes still needs a config."""
    source = read_model(repo / "add_one")
    assert source.config is not None and source.config_generated and not source.error
    assert (source.config.backend, source.config.platform) == ("onnxruntime", "onnxruntime_onnx")
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "1" / "model.bin").write_bytes(b"")
    other = read_model(repo / "other")
    assert other.config is None and "no config.pbtxt or config.yaml" in other.error


def test_served_with_a_completed_config_on_both_protocols(repo: Path) -> None:
    """The completed config (max_batch_size 4, dynamic batching, dims without the batch) is
    what /config says over HTTP and gRPC, and inference answers X + 1."""
    with serve_in_thread(repo, metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        config = http.get_model_config("add_one")
        grpc_config = grpc.get_model_config("add_one", as_json=True)["config"]
        fixed = http.get_model_config("add_one_fixed")
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        given = httpclient.InferInput("X", [2, 3], "FP32")
        given.set_data_from_numpy(x)
        answer = http.infer("add_one", [given]).as_numpy("Y")
    assert config["backend"] == "onnxruntime" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("X", "TYPE_FP32", [3])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("Y", "TYPE_FP32", [3])]
    assert grpc_config["max_batch_size"] == 4
    assert [(t["name"], t["dims"]) for t in grpc_config["input"]] == [("X", ["3"])]
    assert fixed["max_batch_size"] == 0
    assert [t["dims"] for t in fixed["input"]] == [[2, 3]]
    np.testing.assert_array_equal(answer, x + 1)


def test_disable_auto_complete_config_refuses_it(repo: Path) -> None:
    """With auto-complete off the model is unavailable, and the index says why."""
    with serve_in_thread(repo, metrics=False, grpc=False, auto_complete_config=False, strict_readiness=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        index = {m["name"]: m for m in http.get_model_repository_index()}
        assert not http.is_model_ready("add_one")
    assert index["add_one"]["state"] == "UNAVAILABLE"
    assert "no config.pbtxt or config.yaml" in index["add_one"]["reason"]
    assert "--disable-auto-complete-config" in index["add_one"]["reason"]
