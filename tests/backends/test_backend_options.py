"""The torch and ONNX Runtime backends' config options (issue 11, point 3): each option the CPU
build honours is set on a real tiny model built in the test, and its effect is observed where
it lands — the live ONNX Runtime session's options, torch's thread pools, the grad mode and
TorchScript executor mode *inside* the model's ``forward`` — and a bad value is a load failure
naming the field. GPU-only options are skipped here with the reason (bench/gpu_check.sh runs
the GPU tests on the device machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dagserve import InferRequest, Server
from dagserve.backends import onnx as onnx_backend
from dagserve.backends import torch as torch_backend
from dagserve.backends.base import instance_contexts
from dagserve.repository.loader import read_model

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]


# -- models --------------------------------------------------------------------------------------
class Net(torch.nn.Module):  # type: ignore[misc, name-defined]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: Any) -> Any:
        return torch.tanh(self.fc(x))


def export_onnx(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(2, 4),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)


ONNX_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
instance_group [{ kind: KIND_CPU }]
"""

# forward() reports the modes it runs under: inference mode, grad mode, TorchScript's
# optimized (profiling) executor, and torch's intra-op thread count.
PROBE_MODULE = '''
import torch


class Probe(torch.nn.Module):
    def forward(self, x):
        modes = torch.tensor([[
            float(torch.is_inference_mode_enabled()),
            float(torch.is_grad_enabled()),
            float(torch._C._get_graph_executor_optimize()),
            float(torch.get_num_threads()),
        ]]).expand(x.shape[0], 4)
        return x * 0 + modes
'''

PROBE_CONFIG = """
backend: "pytorch"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
instance_group [{ kind: KIND_CPU }]
"""


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


def load_onnx(add_model: ModelWriter, extra: str) -> Any:
    """Load one real instance of an ONNX model whose config ends with ``extra``."""
    model_dir = add_model("m", ONNX_CONFIG + extra, {"1/model.onnx": export_onnx})
    source = read_model(model_dir)
    assert source.config is not None, source.error
    return onnx_backend.load(instance_contexts("m", 1, source.config, model_dir)[0])


def ort_answer(model: Any, x: np.ndarray) -> np.ndarray:
    [result] = model.execute([InferRequest(inputs={"x": x})])
    return np.asarray(result["y"])


async def failure(repo: Path, name: str) -> str:
    """The reason the server gives for model ``name`` not loading."""
    async with Server(model_repository=repo, strict_readiness=False) as server:
        assert not server.model_ready(name)
        entry = next(e for e in server.repository_index() if e["name"] == name)
    return str(entry["reason"])


# -- ONNX Runtime: session options -----------------------------------------------------------
LEVELS = ort.GraphOptimizationLevel


@pytest.mark.parametrize(
    ("extra", "read", "expected"),
    [
        (param("intra_op_thread_count", "2"), lambda o: o.intra_op_num_threads, 2),
        (param("inter_op_thread_count", "3"), lambda o: o.inter_op_num_threads, 3),
        (param("execution_mode", "1"), lambda o: o.execution_mode, ort.ExecutionMode.ORT_PARALLEL),
        ("", lambda o: o.execution_mode, ort.ExecutionMode.ORT_SEQUENTIAL),
        (param("enable_mem_arena", "false"), lambda o: o.enable_cpu_mem_arena, False),
        (param("enable_mem_pattern", "0"), lambda o: o.enable_mem_pattern, False),
        (param("session.use_device_allocator_for_initializers", "1"),
         lambda o: o.get_session_config_entry("session.use_device_allocator_for_initializers"), "1"),
        ("optimization { graph { level: -1 } }\n", lambda o: o.graph_optimization_level, LEVELS.ORT_ENABLE_BASIC),
        ("optimization { graph { level: 1 } }\n", lambda o: o.graph_optimization_level, LEVELS.ORT_ENABLE_EXTENDED),
        ("optimization { graph { level: 2 } }\n", lambda o: o.graph_optimization_level, LEVELS.ORT_DISABLE_ALL),
        ("", lambda o: o.graph_optimization_level, LEVELS.ORT_ENABLE_ALL),
    ],
    ids=["intra_op", "inter_op", "execution_mode", "execution_mode_default", "mem_arena", "mem_pattern",
         "device_allocator", "graph_basic", "graph_extended", "graph_none", "graph_default"],
)
def test_ort_option_reaches_the_live_session(
    repo: Path, add_model: ModelWriter, extra: str, read: Callable[[Any], Any], expected: Any
) -> None:
    """Each session option in the config is the value the loaded ONNX Runtime session runs
    with (read back from the session itself), and the model still answers as ORT does."""
    model = load_onnx(add_model, extra)
    try:
        session = model._session
        assert read(session.get_session_options()) == expected
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        direct = ort.InferenceSession(str(repo / "m" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(ort_answer(model, x), direct.run(["y"], {"x": x})[0], rtol=1e-5, atol=1e-6)
    finally:
        model.close()


def test_ort_arena_shrinkage_is_a_run_option(add_model: ModelWriter) -> None:
    """``memory.enable_memory_arena_shrinkage`` is passed to every run (a RunOptions entry)."""
    model = load_onnx(add_model, param("memory.enable_memory_arena_shrinkage", "cpu:0"))
    try:
        assert model._run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
        assert ort_answer(model, np.ones((1, 4), np.float32)).shape == (1, 3)
    finally:
        model.close()


def test_ort_cpu_instance_runs_on_the_cpu_provider(add_model: ModelWriter) -> None:
    """A KIND_CPU instance's session uses the CPU execution provider only."""
    model = load_onnx(add_model, "")
    try:
        assert model._session.get_providers() == ["CPUExecutionProvider"]
    finally:
        model.close()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (param("intra_op_thread_count", "two"), "parameter intra_op_thread_count must be an integer, not 'two'"),
        (param("inter_op_thread_count", "1.5"), "parameter inter_op_thread_count must be an integer"),
        (param("execution_mode", "2"), "parameter execution_mode must be 0 (sequential) or 1 (parallel), not 2"),
        (param("enable_mem_arena", "maybe"), "parameter enable_mem_arena must be true or false, not 'maybe'"),
        (param("enable_mem_pattern", "2"), "parameter enable_mem_pattern must be true or false"),
        ('optimization { graph { level: "high" } }\n', 'Couldn\'t parse integer: "high"'),  # pbtxt parser
        ("optimization { execution_accelerators { cpu_execution_accelerator: [{ name: \"dnnl\" }] } }\n",
         "unknown CPU execution accelerator 'dnnl' (use openvino)"),
    ],
    ids=["intra_op", "inter_op", "execution_mode", "mem_arena", "mem_pattern", "graph_level", "cpu_accelerator"],
)
async def test_ort_bad_option_fails_the_load_naming_it(
    repo: Path, add_model: ModelWriter, extra: str, reason: str
) -> None:
    """A bad option value fails that model's load with a reason naming the field and value."""
    add_model("bad", ONNX_CONFIG + extra, {"1/model.onnx": export_onnx})
    assert reason in await failure(repo, "bad")


async def test_ort_graph_level_from_yaml_is_checked(repo: Path, add_model: ModelWriter) -> None:
    """A YAML config (not type-checked by a protobuf parser) with a non-integer graph level
    fails the load naming the field, not with a bare ValueError."""
    config = json.dumps({
        "platform": "onnxruntime_onnx", "max_batch_size": 4,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
        "optimization": {"graph": {"level": "high"}},
    })
    add_model("bad", config, {"1/model.onnx": export_onnx}, suffix="yaml")
    assert "optimization graph level must be an integer (-1 basic, 1 extended, 2 none, otherwise all), not 'high'" in (
        await failure(repo, "bad"))


async def test_ort_openvino_needs_its_build(repo: Path, add_model: ModelWriter) -> None:
    """``cpu_execution_accelerator: openvino`` without onnxruntime-openvino is a load failure
    saying what to install (with it, the session runs on OpenVINO: not testable here)."""
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has OpenVINO")
    add_model("ov", ONNX_CONFIG + 'optimization { execution_accelerators { cpu_execution_accelerator: '
              '[{ name: "openvino" }] } }\n', {"1/model.onnx": export_onnx})
    assert "needs onnxruntime-openvino" in await failure(repo, "ov")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="GPU-only: the CUDA/TensorRT execution accelerators and the legacy CUDA parameters "
                    "(gpu_mem_limit, cudnn_conv_algo_search, arena_extend_strategy, do_copy_in_default_stream) "
                    "need onnxruntime-gpu and a GPU")
def test_ort_gpu_instance_runs_on_cuda(add_model: ModelWriter) -> None:
    """A KIND_GPU instance's session runs on CUDA with the legacy CUDA parameters applied."""
    model_dir = add_model("g", ONNX_CONFIG.replace("KIND_CPU", "KIND_GPU") + param("gpu_mem_limit", "1073741824"),
                          {"1/model.onnx": export_onnx})
    source = read_model(model_dir)
    assert source.config is not None
    model = onnx_backend.load(instance_contexts("g", 1, source.config, model_dir)[0])
    try:
        assert model._session.get_providers()[0] == "CUDAExecutionProvider"
        assert model._session.get_provider_options()["CUDAExecutionProvider"]["gpu_mem_limit"] == "1073741824"
    finally:
        model.close()


# -- torch -------------------------------------------------------------------------------------
@pytest.fixture
def torch_threads() -> Iterator[None]:
    """torch's intra-op pool is process-wide: put it back after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


async def probe(repo: Path, add_model: ModelWriter, extra: str) -> np.ndarray:
    """Serve the probe module with ``extra`` config and return what its forward saw."""
    add_model("probe", PROBE_CONFIG + extra, {"1/model.py": PROBE_MODULE.encode()})
    async with Server(model_repository=repo) as server:
        response = await server.infer("probe", "", InferRequest(inputs={"x": np.ones((1, 4), np.float32)}))
    return np.asarray(response.outputs["y"])[0]


async def test_torch_inference_mode_default_and_off(repo: Path, add_model: ModelWriter) -> None:
    """By default forward runs under torch.inference_mode; INFERENCE_MODE false runs it under
    no_grad instead (inference mode off, gradients still off)."""
    on = await probe(repo, add_model, "")
    assert on[0] == 1.0 and on[1] == 0.0
    off = await probe(repo, add_model, param("INFERENCE_MODE", "false"))
    assert off[0] == 0.0 and off[1] == 0.0


async def test_torch_disable_optimized_execution(repo: Path, add_model: ModelWriter) -> None:
    """DISABLE_OPTIMIZED_EXECUTION true turns TorchScript's optimized executor off while the
    model runs (torch.jit.optimized_execution(False)); by default it stays on."""
    assert (await probe(repo, add_model, ""))[2] == 1.0
    assert (await probe(repo, add_model, param("DISABLE_OPTIMIZED_EXECUTION", "true")))[2] == 0.0


async def test_torch_intra_op_thread_count(repo: Path, add_model: ModelWriter, torch_threads: None) -> None:
    """INTRA_OP_THREAD_COUNT sets torch's intra-op pool, as seen inside forward."""
    wanted = 3 if torch.get_num_threads() != 3 else 2
    assert (await probe(repo, add_model, param("INTRA_OP_THREAD_COUNT", str(wanted))))[3] == wanted


def test_torch_inter_op_thread_count_in_a_fresh_process(repo: Path, add_model: ModelWriter) -> None:
    """INTER_OP_THREAD_COUNT sets torch's inter-op pool (once per process, as torch allows);
    a second model asking for another count cannot change it and fails naming the field. Run
    in a fresh interpreter, since this process's pool may already be fixed."""
    for name, count in (("first", 3), ("second", 2)):
        add_model(name, PROBE_CONFIG + param("INTER_OP_THREAD_COUNT", str(count)),
                  {"1/model.py": PROBE_MODULE.encode()})
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from dagserve.backends import torch as torch_backend
        from dagserve.backends.base import instance_contexts
        from dagserve.errors import ConfigError
        from dagserve.repository.loader import read_model

        def load(name):
            source = read_model(Path({str(repo)!r}) / name)
            return torch_backend.load(instance_contexts(name, 1, source.config, source.path)[0])

        load("first")
        print("interop", torch.get_num_interop_threads())
        try:
            load("second")
        except ConfigError as exc:
            print("refused", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                          timeout=180, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert "interop 3" in proc.stdout.splitlines(), proc.stdout
    assert "cannot set INTER_OP_THREAD_COUNT now" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (param("INFERENCE_MODE", "maybe"), "parameter INFERENCE_MODE must be true or false, not 'maybe'"),
        (param("DISABLE_OPTIMIZED_EXECUTION", "2"), "parameter DISABLE_OPTIMIZED_EXECUTION must be true or false"),
        (param("INTRA_OP_THREAD_COUNT", "many"), "parameter INTRA_OP_THREAD_COUNT must be an integer, not 'many'"),
        (param("INTER_OP_THREAD_COUNT", "x"), "parameter INTER_OP_THREAD_COUNT must be an integer"),
        (param("precision", "fp8"), "parameter precision must be fp32, fp16 or bf16, not 'fp8'"),
        (param("output_memory", "disk"), "parameter output_memory must be device or host, not 'disk'"),
    ],
    ids=["inference_mode", "disable_optimized", "intra_op", "inter_op", "precision", "output_memory"],
)
async def test_torch_bad_option_fails_the_load_naming_it(
    repo: Path, add_model: ModelWriter, extra: str, reason: str, torch_threads: None
) -> None:
    """A bad option value fails that model's load with a reason naming the field and value."""
    add_model("bad", PROBE_CONFIG + extra, {"1/model.py": PROBE_MODULE.encode()})
    assert reason in await failure(repo, "bad")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="GPU-only: output_memory host (pinned host outputs) and KIND_GPU placement need CUDA")
async def test_torch_output_memory_host_on_gpu(repo: Path, add_model: ModelWriter) -> None:
    """On a GPU instance, output_memory host hands back host tensors."""
    add_model("g", PROBE_CONFIG.replace("KIND_CPU", "KIND_GPU") + param("output_memory", "host"),
              {"1/model.py": PROBE_MODULE.encode()})
    source = read_model(repo / "g")
    assert source.config is not None
    model = torch_backend.load(instance_contexts("g", 1, source.config, source.path)[0])
    try:
        [result] = model.execute([InferRequest(inputs={"x": np.ones((1, 4), np.float32)})])
        assert result["y"].device.type == "cpu"
    finally:
        model.close()
