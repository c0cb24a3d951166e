"""The ONNX Runtime backend: a torch module exported to ONNX, served with auto-completed config,
Triton's session options and execution-provider selection."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import onnxruntime as ort
import pytest
import torch

from dagserve import InferRequest, Server
from dagserve.backends import get_backend
from dagserve.backends import onnx as onnx_backend
from dagserve.backends.base import ModelContext
from dagserve.errors import ConfigError
from dagserve.repository.loader import load_config
from dagserve.testing import serve_in_thread

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]


class Net(torch.nn.Module):  # type: ignore[misc, name-defined]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return torch.sigmoid(self.fc(x))


def export_onnx(module: Any, *, dynamic_batch: bool = True) -> Callable[[Path], None]:
    """A writer exporting ``module`` (input x [batch, 4] -> y [batch, 3]) to ONNX."""

    def write(path: Path) -> None:
        axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
        with warnings.catch_warnings():
            # torch 2.13's TorchScript-based exporter is deprecated; the dynamo one needs onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), (torch.randn(2, 4),), str(path), input_names=["x"], output_names=["y"],
                dynamic_axes=axes, dynamo=False,
            )

    return write


def ort_direct(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


BARE = 'platform: "onnxruntime_onnx"\n'


async def test_auto_complete_fills_config_from_the_graph(repo: Path, add_model: ModelWriter) -> None:
    """A config naming only the platform gets inputs, outputs, max_batch_size 4 and dynamic
    batching from the graph, shows them in /config, and serves like ONNX Runtime directly."""
    model_dir = add_model("auto", BARE, {"1/model.onnx": export_onnx(Net())})
    x = rows(3)
    async with Server(model_repository=repo) as server:
        config = server.model_config("auto")
        response = await server.infer("auto", "", InferRequest(inputs={"x": x}))
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "dims": [4], "optional": False, "allow_ragged_batch": False,
         "is_shape_tensor": False, "is_non_linear_format_io": False, "label_filename": "", "format": "FORMAT_NONE"}
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [("y", "TYPE_FP32", [3])]
    np.testing.assert_allclose(response.outputs["y"], ort_direct(model_dir / "1" / "model.onnx", x), rtol=1e-6)
    with torch.inference_mode():
        np.testing.assert_allclose(response.outputs["y"], Net()(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


async def test_auto_complete_of_a_fixed_batch_graph(repo: Path, add_model: ModelWriter) -> None:
    """A graph with a fixed first dimension cannot batch: auto-complete keeps max_batch_size 0
    and full dims, and a config asking to batch it fails with the reason."""
    add_model("fixed", BARE, {"1/model.onnx": export_onnx(Net(), dynamic_batch=False)})
    add_model("fixed_batched", BARE + "max_batch_size: 8\n", {"1/model.onnx": export_onnx(Net(), dynamic_batch=False)})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        config = server.model_config("fixed")
        response = await server.infer("fixed", "", InferRequest(inputs={"x": rows(2)}))
        reasons = {e["name"]: e["reason"] for e in server.repository_index()}
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [2, 4]
    assert response.outputs["y"].shape == (2, 3)
    assert "the graph cannot batch" in reasons["fixed_batched"]


async def test_concurrent_requests_batch_into_one_session_run(repo: Path, add_model: ModelWriter) -> None:
    """Concurrent requests are batched (fewer runs than requests), each answered with its rows."""
    config = BARE + "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    model_dir = add_model("net", config, {"1/model.onnx": export_onnx(Net())})
    inputs = [rows(1 + i % 2, seed=i) for i in range(16)]
    outputs: dict[int, np.ndarray] = {}
    async with Server(model_repository=repo) as server:

        async def one(i: int) -> None:
            outputs[i] = (await server.infer("net", "", InferRequest(inputs={"x": inputs[i]}))).outputs["y"]

        async with anyio.create_task_group() as tg:
            for i in range(len(inputs)):
                tg.start_soon(one, i)
        stats = server.statistics("net")["model_stats"][0]
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(outputs[i], ort_direct(model_dir / "1" / "model.onnx", x), rtol=1e-6)
    assert stats["execution_count"] < len(inputs)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (BARE + 'input [{ name: "x" data_type: TYPE_INT64 dims: [4] }]\n'
         'output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]\nmax_batch_size: 4\n',
         "is TYPE_INT64 in the config but tensor(float) in the graph"),
        (BARE + 'input [{ name: "nope" data_type: TYPE_FP32 dims: [4] }]\n'
         'output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]\nmax_batch_size: 4\n',
         "input 'nope' is not in the ONNX graph"),
        (BARE + 'instance_group [{ kind: KIND_GPU }]\n', "pip install onnxruntime-gpu"),
        (BARE + 'parameters { key: "execution_mode" value: { string_value: "3" } }\n', "execution_mode must be 0"),
    ],
)
async def test_load_failures_are_explained(repo: Path, add_model: ModelWriter, config: str, reason: str) -> None:
    """A config that does not fit the graph or the installed onnxruntime fails with the reason."""
    if "KIND_GPU" in config and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    add_model("bad", config, {"1/model.onnx": export_onnx(Net())})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        assert not server.model_ready("bad")
        [entry] = server.repository_index()
    assert reason in entry["reason"]


def test_session_options_follow_triton_names() -> None:
    """Triton's graph level and thread parameters become the matching ONNX Runtime options."""
    config = SimpleNamespace(
        parameters={"intra_op_thread_count": "3", "inter_op_thread_count": "2", "execution_mode": "1",
                    "enable_mem_arena": "0"},
        optimization={"graph": {"level": -1}},
    )
    options = onnx_backend._session_options(ort, config, "model 'm'")  # type: ignore[arg-type]
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_cpu_mem_arena is False
    config.optimization = {"graph": {"level": 2}}
    assert onnx_backend._session_options(ort, config, "m").graph_optimization_level == (  # type: ignore[arg-type]
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )


def test_gpu_instances_get_tensorrt_then_cuda_providers() -> None:
    """A GPU instance asking for the tensorrt accelerator gets TensorRT (Triton's options
    translated), then CUDA, then CPU, all on the instance's GPU."""
    fake_ort = SimpleNamespace(get_available_providers=lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    optimization = {"execution_accelerators": {"gpu_execution_accelerator": [
        {"name": "tensorrt", "parameters": {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824",
                                            "trt_engine_cache_enable": "1"}},
        {"name": "cuda", "parameters": {"cudnn_conv_use_max_workspace": "0"}},
    ]}}
    context = SimpleNamespace(
        config=SimpleNamespace(optimization=optimization, parameters={"gpu_mem_limit": "1000"}),
        instance_kind="GPU", device_id=1,
    )
    providers = onnx_backend._providers(fake_ort, context, "m")  # type: ignore[arg-type]
    assert providers == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "True", "trt_int8_enable": "False",
                                       "trt_max_workspace_size": "1073741824", "trt_engine_cache_enable": "1",
                                       "device_id": "1"}),
        ("CUDAExecutionProvider", {"device_id": "1", "gpu_mem_limit": "1000", "cudnn_conv_use_max_workspace": "0"}),
        "CPUExecutionProvider",
    ]
    context.instance_kind = "CPU"
    assert onnx_backend._providers(fake_ort, context, "m") == ["CPUExecutionProvider"]  # type: ignore[arg-type]
    bad = {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "openvino"}]}}
    context.instance_kind, context.config.optimization = "GPU", bad
    with pytest.raises(ConfigError, match="unknown GPU execution accelerator 'openvino'"):
        onnx_backend._providers(fake_ort, context, "m")  # type: ignore[arg-type]


def test_missing_onnxruntime_names_the_extra(repo: Path, add_model: ModelWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime, loading says to install dagserve[onnx], and auto-complete leaves the
    config as it is."""
    model_dir = add_model("net", BARE, {"1/model.onnx": export_onnx(Net())})
    config, _ = load_config(model_dir)
    context = ModelContext(
        name="net", version=1, config=config, model_dir=model_dir, version_dir=model_dir / "1",
        repository=repo, instance_name="net_0_0",
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'dagserve\[onnx\]'"):
        get_backend("onnxruntime").load(context)
    from dagserve.backends import complete_config

    assert complete_config(config, model_dir, [1]) is config


def test_served_over_http_and_grpc_with_completed_config(repo: Path, add_model: ModelWriter) -> None:
    """tritonclient sees the auto-completed config and the graph's answers over HTTP and gRPC."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    model_dir = add_model("auto", BARE, {"1/model.onnx": export_onnx(Net())})
    x = rows(2)
    expected = ort_direct(model_dir / "1" / "model.onnx", x)
    with serve_in_thread(repo, metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        http_config = http.get_model_config("auto")
        tensor = httpclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        got_http = http.infer("auto", [tensor]).as_numpy("y")
        http.close()
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        grpc_config = grpc.get_model_config("auto", as_json=True)["config"]
        gtensor = grpcclient.InferInput("x", [2, 4], "FP32")
        gtensor.set_data_from_numpy(x)
        got_grpc = grpc.infer("auto", [gtensor]).as_numpy("y")
        grpc.close()
    assert http_config["max_batch_size"] == 4 and http_config["input"][0]["name"] == "x"
    assert grpc_config["max_batch_size"] == 4 and grpc_config["output"][0]["name"] == "y"
    np.testing.assert_allclose(got_http, expected, rtol=1e-6)
    np.testing.assert_allclose(got_grpc, expected, rtol=1e-6)
