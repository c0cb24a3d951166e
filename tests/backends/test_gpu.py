"""GPU behaviour: models on CUDA devices, tensors kept on the GPU between steps (torch and CuPy
handing over by DLPack) and copied to host, through pinned memory, only at the edge.

Every test is marked ``gpu`` and skipped where CUDA is absent (see conftest.py); they ran on the
device machine through ``bench/gpu_check.sh`` (results in docs/gpu.md).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dagserve import InferRequest, Server
from dagserve.types import DataType, datatype_of, is_device_tensor, to_host

pytestmark = [pytest.mark.anyio, pytest.mark.gpu]

ModelWriter = Callable[..., Path]

EMBED = b'''
import torch


def create_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
'''

EMBED_CONFIG = """
backend: "pytorch"
max_batch_size: 32
input [{ name: "x" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [8] }]
instance_group [{ kind: KIND_GPU gpus: [0] count: 2 }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
model_warmup [{ name: "w" batch_size: 4 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [16] random_data: true } } }]
"""

# A Python step computing with CuPy on whatever GPU tensor it is given, by DLPack; it refuses
# host arrays, so a test passing through it proves the tensor stayed on the device.
CUPY_STEP = b'''
import cupy
import numpy as np


def infer(inputs):
    x = inputs["y"]
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack__"):
        raise TypeError(f"expected a GPU tensor, got {type(x).__name__}")
    y = cupy.from_dlpack(x)
    return {"z": cupy.tanh(y) * 2}
'''

CUPY_CONFIG = """
backend: "python"
max_batch_size: 32
input [{ name: "y" data_type: TYPE_FP32 dims: [8] }]
output [{ name: "z" data_type: TYPE_FP32 dims: [8] }]
"""

ENSEMBLE = """
platform: "ensemble"
max_batch_size: 32
input [{ name: "x" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "z" data_type: TYPE_FP32 dims: [8] }]
ensemble_scheduling { step [
  { model_name: "embed" model_version: -1 input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } },
  { model_name: "cupy_step" model_version: -1 input_map { key: "y" value: "y" } output_map { key: "z" value: "z" } }
] }
"""


def reference(x: np.ndarray) -> np.ndarray:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)


async def test_gpu_model_outputs_stay_on_device(repo: Path, add_model: ModelWriter) -> None:
    """A KIND_GPU torch model answers CUDA tensors (no host copy), equal after to_host to the
    module on the CPU; to_host copies into pinned memory."""
    import torch

    add_model("embed", EMBED_CONFIG, {"1/model.py": EMBED})
    x = rows(5)
    async with Server(model_repository=repo) as server:
        response = await server.infer("embed", "", InferRequest(inputs={"x": x}))
    y: Any = response.outputs["y"]  # a torch CUDA tensor, not the numpy array the type says
    assert is_device_tensor(y) and y.device.type == "cuda"
    assert datatype_of(y) is DataType.FP32
    host = to_host(y)
    assert torch.from_numpy(host).is_pinned()
    np.testing.assert_allclose(host, reference(x), rtol=1e-4, atol=1e-5)


async def test_host_output_memory_answers_pinned_numpy(repo: Path, add_model: ModelWriter) -> None:
    """With output_memory host, a GPU model copies each batch's outputs to pinned host memory
    itself and answers numpy arrays, batched requests each getting their own rows."""
    import anyio
    import torch

    config = EMBED_CONFIG + 'parameters { key: "output_memory" value: { string_value: "host" } }\n'
    add_model("embed", config, {"1/model.py": EMBED})
    inputs = [rows(1 + i % 3) * (i + 1) for i in range(12)]
    answers: dict[int, np.ndarray] = {}
    async with Server(model_repository=repo) as server:

        async def one(i: int) -> None:
            answers[i] = (await server.infer("embed", "", InferRequest(inputs={"x": inputs[i]}))).outputs["y"]

        async with anyio.create_task_group() as tg:
            for i in range(len(inputs)):
                tg.start_soon(one, i)
    for i, x in enumerate(inputs):
        assert isinstance(answers[i], np.ndarray) and torch.from_numpy(answers[i]).is_pinned()
        np.testing.assert_allclose(answers[i], reference(x), rtol=1e-4, atol=1e-4)


TWO_STREAMS = b'''
import threading

import torch

STREAMS = set()
BOTH_IN = threading.Barrier(2, timeout=120)


def create_model():
    class Double(torch.nn.Module):
        def forward(self, x):
            STREAMS.add(torch.cuda.current_stream().cuda_stream)
            BOTH_IN.wait()  # returns only once two forwards run at once
            return x * 2, torch.full((x.shape[0], 1), float(len(STREAMS)), device=x.device)

    return Double()
'''


async def test_one_gpu_instance_runs_two_batches_on_two_streams(repo: Path, add_model: ModelWriter) -> None:
    """By default one KIND_GPU torch instance takes a second batch while the first runs
    (``batches_in_flight`` 3), on a CUDA stream of its own: both forwards are inside at once
    (a barrier of two) and saw two streams."""
    import anyio

    config = """
backend: "pytorch"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }, { name: "streams" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_GPU gpus: [0] count: 1 }]
"""
    add_model("double", config, {"1/model.py": TWO_STREAMS})
    inputs = [np.full((1, 3), i + 1, np.float32) for i in range(2)]
    answers: dict[int, Any] = {}
    async with Server(model_repository=repo) as server:

        async def one(i: int) -> None:
            answers[i] = (await server.infer("double", "", InferRequest(inputs={"x": inputs[i]}))).outputs

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(one, i)
    for i in range(2):
        np.testing.assert_array_equal(to_host(answers[i]["y"]), inputs[i] * 2)
        np.testing.assert_array_equal(to_host(answers[i]["streams"]), [[2.0]])


async def test_half_precision_on_gpu(repo: Path, add_model: ModelWriter) -> None:
    """precision fp16 computes in half on the GPU (its answer is the half one, not the
    full-precision one) and still answers FP32."""
    import torch

    config = EMBED_CONFIG + 'parameters { key: "precision" value: { string_value: "fp16" } }\n'
    add_model("embed", config, {"1/model.py": EMBED})
    x = rows(8)
    async with Server(model_repository=repo) as server:
        y = (await server.infer("embed", "", InferRequest(inputs={"x": x}))).outputs["y"]
    assert datatype_of(y) is DataType.FP32
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    with torch.inference_mode():
        in_half = model.half().cuda()(torch.from_numpy(x).half().cuda()).float().cpu().numpy()
    answer = to_host(y)
    np.testing.assert_allclose(answer, in_half, rtol=1e-2, atol=1e-2)
    assert np.abs(answer - reference(x)).max() > 1e-4, "the answer is full precision: fp16 was not used"


async def test_torch_to_cupy_chain_by_dlpack(repo: Path, add_model: ModelWriter) -> None:
    """The torch model's CUDA output goes as is to a CuPy step (DLPack, no host copy), whose
    CuPy output comes back to host only at the end."""
    add_model("embed", EMBED_CONFIG, {"1/model.py": EMBED})
    add_model("cupy_step", CUPY_CONFIG, {"1/model.py": CUPY_STEP})
    x = rows(6)
    async with Server(model_repository=repo) as server:
        y = (await server.infer("embed", "", InferRequest(inputs={"x": x}))).outputs["y"]
        z = (await server.infer("cupy_step", "", InferRequest(inputs={"y": y}))).outputs["z"]
    assert is_device_tensor(z) and type(z).__module__.startswith("cupy")
    np.testing.assert_allclose(to_host(z), np.tanh(reference(x)) * 2, rtol=1e-4, atol=1e-5)


async def test_gpu_resident_ensemble(repo: Path, add_model: ModelWriter) -> None:
    """As a Triton ensemble (torch on GPU -> CuPy step), concurrent requests keep every
    intermediate tensor on the GPU and answer as the steps by hand."""
    import anyio

    add_model("embed", EMBED_CONFIG, {"1/model.py": EMBED})
    add_model("cupy_step", CUPY_CONFIG, {"1/model.py": CUPY_STEP})
    add_model("chain", ENSEMBLE)
    inputs = [rows(1 + i % 4) for i in range(16)]
    answers: dict[int, np.ndarray] = {}
    async with Server(model_repository=repo) as server:

        async def one(i: int) -> None:
            response = await server.infer("chain", "", InferRequest(inputs={"x": inputs[i]}))
            answers[i] = to_host(response.outputs["z"])

        async with anyio.create_task_group() as tg:
            for i in range(len(inputs)):
                tg.start_soon(one, i)
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(answers[i], np.tanh(reference(x)) * 2, rtol=1e-4, atol=1e-5)


async def test_fil_on_gpu_instance_without_cuml_falls_back_to_cpu(
    repo: Path, add_model: ModelWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """Without cuML a KIND_GPU FIL model warns and runs on the CPU, taking a GPU tensor from an
    earlier step, with XGBoost's own results."""
    if importlib.util.find_spec("xgboost") is None:
        pytest.skip("xgboost is not installed")
    if importlib.util.find_spec("cuml") is not None:
        pytest.skip("cuML is installed: the GPU path runs instead")
    import torch
    import xgboost as xgb

    x = rows(200)
    labels = (x[:, 0] + x[:, 1] > 0).astype(int)
    clf = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(x, labels)
    add_model("trees", """
backend: "fil"
max_batch_size: 1024
input [{ name: "input__0" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "output__0" data_type: TYPE_FP32 dims: [2] }]
instance_group [{ kind: KIND_GPU }]
parameters { key: "model_type" value: { string_value: "xgboost_json" } }
parameters { key: "output_class" value: { string_value: "true" } }
parameters { key: "predict_proba" value: { string_value: "true" } }
""", {"1/xgboost.json": lambda p: clf.save_model(str(p))})
    with caplog.at_level(logging.WARNING, logger="dagserve.backends.fil"):
        async with Server(model_repository=repo) as server:
            on_gpu: Any = torch.from_numpy(x).cuda()
            out = (await server.infer("trees", "", InferRequest(inputs={"input__0": on_gpu}))).outputs["output__0"]
    assert "cuML is not installed" in caplog.text
    np.testing.assert_allclose(out, clf.predict_proba(x), rtol=1e-5, atol=1e-6)


async def test_onnx_gpu_instance_needs_onnxruntime_gpu(repo: Path, add_model: ModelWriter) -> None:
    """A KIND_GPU ONNX model with CPU-only onnxruntime fails to load, naming onnxruntime-gpu."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    add_model("onnx_gpu", 'platform: "onnxruntime_onnx"\ninstance_group [{ kind: KIND_GPU }]\n',
              {"1/model.onnx": b"unused: the provider check comes first"})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        [entry] = server.repository_index()
    assert "pip install onnxruntime-gpu" in entry["reason"]


def test_cupy_to_host_uses_pinned_memory() -> None:
    """to_host copies a CuPy array into pinned host memory with the same values."""
    cupy = pytest.importorskip("cupy")
    array = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    host = to_host(array)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert datatype_of(array) is DataType.FP32
    import torch

    assert torch.from_numpy(host).is_pinned()  # page-locked, whoever allocated it


def test_gpu_outputs_over_http_and_grpc(repo: Path, add_model: ModelWriter) -> None:
    """A GPU model whose outputs stay on the device answers over the wire: the frontends copy
    to host at the edge (plain urllib for HTTP and grpcio for gRPC, no client library needed)."""
    import urllib.request

    import grpc

    from dagserve._proto import grpc_service_pb2 as pb
    from dagserve._proto import grpc_service_pb2_grpc as pb_grpc
    from dagserve.testing import serve_in_thread

    add_model("embed", EMBED_CONFIG, {"1/model.py": EMBED})
    x = rows(3)
    with serve_in_thread(repo, metrics=False) as running:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16], "data": x.ravel().tolist()}]})
        request = urllib.request.Request(f"http://{running.http_url}/v2/models/embed/infer", data=body.encode())
        with urllib.request.urlopen(request) as reply:
            answer = json.loads(reply.read())
        y = np.array(answer["outputs"][0]["data"], np.float32).reshape(3, 8)
        np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-5)

        with grpc.insecure_channel(running.grpc_url) as channel:
            grpc_request = pb.ModelInferRequest(model_name="embed")
            tensor = grpc_request.inputs.add(name="x", datatype="FP32", shape=[3, 16])
            del tensor
            grpc_request.raw_input_contents.append(x.tobytes())
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request)
        y = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(3, 8)
        np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-5)


async def test_kind_auto_uses_the_gpu(repo: Path, add_model: ModelWriter) -> None:
    """No instance_group (KIND_AUTO, as Triton): a torch model goes to the GPU when there is one."""
    config = EMBED_CONFIG.split("instance_group")[0] + "\n"
    add_model("embed", config, {"1/model.py": EMBED})
    async with Server(model_repository=repo) as server:
        response = await server.infer("embed", "", InferRequest(inputs={"x": rows(2)}))
    y: Any = response.outputs["y"]
    assert is_device_tensor(y) and y.device.type == "cuda"


def test_pinned_memory_gauges_follow_torch(repo: Path, add_model: ModelWriter) -> None:
    """nv_pinned_memory_pool_total_bytes / _used_bytes report torch's caching host allocator:
    after a GPU model with output_memory host has answered, the pool holds memory (used at
    most total), read on a real scrape of /metrics."""
    import re
    import urllib.request

    from dagserve.testing import serve_in_thread, wait_until

    config = EMBED_CONFIG + 'parameters { key: "output_memory" value: { string_value: "host" } }\n'
    add_model("embed", config, {"1/model.py": EMBED})
    x = rows(4)
    with serve_in_thread(repo, grpc=False, metrics_interval_ms=50) as running:
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 16], "data": x.ravel().tolist()}]})
        request = urllib.request.Request(f"http://{running.http_url}/v2/models/embed/infer", data=body.encode())
        with urllib.request.urlopen(request) as reply:
            assert reply.status == 200

        def gauge(name: str) -> float:
            with urllib.request.urlopen(f"http://{running.metrics_url}/metrics") as page:
                text = page.read().decode()
            found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
            assert found, f"no {name} in /metrics"
            return float(found.group(1))

        wait_until(lambda: gauge("nv_pinned_memory_pool_total_bytes") > 0, what="a poll after CUDA started")
        assert 0 <= gauge("nv_pinned_memory_pool_used_bytes") <= gauge("nv_pinned_memory_pool_total_bytes")
