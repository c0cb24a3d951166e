"""The PyTorch backend: TorchScript, torch.export and nn.Module files, served as on Triton."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch

from dagserve import InferRequest, Server
from dagserve.backends import get_backend
from dagserve.backends.base import ModelContext
from dagserve.errors import ConfigError
from dagserve.repository.loader import load_config
from dagserve.testing import serve_in_thread

pytestmark = [
    pytest.mark.anyio,
    # TorchScript is deprecated in torch 2.13, but it is what Triton repositories hold.
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
    # torch 2.11's torch.export.load reads its archive through a read-only buffer and says so.
    pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning"),
]

ModelWriter = Callable[..., Path]


class Net(torch.nn.Module):  # type: ignore[misc, name-defined]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[name-defined]
        return torch.relu(self.fc(x)) * 2


class TwoInTwoOut(torch.nn.Module):  # type: ignore[misc, name-defined]
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[name-defined]
        return a - b, a * b


class DictIn(torch.nn.Module):  # type: ignore[misc, name-defined]
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[name-defined]
        return inputs["a"] * 10 + inputs["b"]


NET_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""

MODULE_FILE = '''
import torch


class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x):
        scaled = x * self.weight
        return {"scaled": scaled, "total": scaled.sum(dim=1, keepdim=True)}
'''

MODULE_CONFIG = """
backend: "pytorch"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [
  { name: "total" data_type: TYPE_FP32 dims: [1] },
  { name: "scaled" data_type: TYPE_FP32 dims: [4] }
]
"""


def save_script(module: Any) -> Any:
    return lambda path: torch.jit.save(torch.jit.script(module.eval()), str(path))


def save_export(module: Any, example: Any) -> Any:
    def write(path: Path) -> None:
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(module.eval(), (example,), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, str(path))

    return write


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def direct(module: Any, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module.eval()(torch.from_numpy(x)).numpy()


async def test_torchscript_with_index_names_batches_concurrent_requests(repo: Path, add_model: ModelWriter) -> None:
    """Concurrent requests to a TorchScript model are batched into fewer forwards and each gets
    exactly what the module computes for its own rows."""
    add_model("net", NET_CONFIG, {"1/model.pt": save_script(Net())})
    inputs = [rows(1 + i % 3, seed=i) for i in range(24)]
    outputs: dict[int, np.ndarray] = {}
    async with Server(model_repository=repo) as server:

        async def one(i: int) -> None:
            response = await server.infer("net", "", InferRequest(inputs={"INPUT__0": inputs[i]}))
            outputs[i] = response.outputs["OUTPUT__0"]

        async with anyio.create_task_group() as tg:
            for i in range(len(inputs)):
                tg.start_soon(one, i)
        stats = server.statistics("net")["model_stats"][0]
    reference = Net()
    for i, x in enumerate(inputs):
        np.testing.assert_allclose(outputs[i], direct(reference, x), rtol=1e-6, atol=1e-6)
    assert stats["execution_count"] < len(inputs)  # batched: fewer forwards than requests


async def test_exported_program_pt2(repo: Path, add_model: ModelWriter) -> None:
    """A torch.export program (model.pt2) with a dynamic batch answers like the module, with its
    input reached by forward-argument name."""
    config = NET_CONFIG.replace("INPUT__0", "x").replace("OUTPUT__0", "y")
    add_model("exported", config, {"1/model.pt2": save_export(Net(), torch.randn(2, 4))})
    x = rows(5)
    async with Server(model_repository=repo) as server:
        response = await server.infer("exported", "", InferRequest(inputs={"x": x}))
    np.testing.assert_allclose(response.outputs["y"], direct(Net(), x), rtol=1e-6, atol=1e-6)


async def test_module_file_with_state_dict_and_dict_outputs(repo: Path, add_model: ModelWriter) -> None:
    """model.py defining one nn.Module, with its weights in model.pt beside it, returns a dict
    matched to outputs by name."""
    model_dir = add_model("scale", MODULE_CONFIG, {"1/model.py": MODULE_FILE.encode()})
    torch.save({"weight": torch.tensor([1.0, 2.0, 3.0, 4.0])}, model_dir / "1" / "model.pt")
    x = np.ones((2, 4), np.float32)
    async with Server(model_repository=repo) as server:
        response = await server.infer("scale", "", InferRequest(inputs={"x": x}))
    np.testing.assert_array_equal(response.outputs["scaled"], [[1, 2, 3, 4], [1, 2, 3, 4]])
    np.testing.assert_array_equal(response.outputs["total"], [[10], [10]])


async def test_module_file_factory_gets_the_context(repo: Path, add_model: ModelWriter) -> None:
    """A create_model(context) factory builds the module and can read the model's config."""
    source = (
        "import torch\n"
        "def create_model(context):\n"
        "    factor = float(context.config.parameters['factor'])\n"
        "    class Mul(torch.nn.Module):\n"
        "        def forward(self, x):\n"
        "            return x * factor\n"
        "    return Mul()\n"
    )
    config = MODULE_CONFIG.replace(
        'output [\n  { name: "total" data_type: TYPE_FP32 dims: [1] },\n  { name: "scaled" data_type: TYPE_FP32 dims: [4] }\n]',
        'output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]\nparameters { key: "factor" value: { string_value: "3" } }',
    )
    add_model("factory", config, {"1/model.py": source.encode()})
    async with Server(model_repository=repo) as server:
        response = await server.infer("factory", "", InferRequest(inputs={"x": np.ones((1, 4), np.float32)}))
    np.testing.assert_array_equal(response.outputs["y"], [[3, 3, 3, 3]])


@pytest.mark.parametrize(
    ("names", "expected_first"),
    [
        (("INPUT__1", "INPUT__0"), "INPUT__0"),  # named index: __0 is forward's first argument
        (("b", "a"), "a"),  # forward-argument names, whatever the config order
    ],
)
async def test_input_naming_conventions(
    repo: Path, add_model: ModelWriter, names: tuple[str, str], expected_first: str
) -> None:
    """Inputs reach forward() by Triton's naming conventions, outputs by __index."""
    config = f"""
    platform: "pytorch_libtorch"
    max_batch_size: 0
    input [{{ name: "{names[0]}" data_type: TYPE_FP32 dims: [2] }}, {{ name: "{names[1]}" data_type: TYPE_FP32 dims: [2] }}]
    output [{{ name: "OUT__1" data_type: TYPE_FP32 dims: [2] }}, {{ name: "OUT__0" data_type: TYPE_FP32 dims: [2] }}]
    """
    add_model("two", config, {"1/model.pt": save_script(TwoInTwoOut())})
    first, second = np.array([5, 6], np.float32), np.array([1, 2], np.float32)
    other = names[0] if names[1] == expected_first else names[1]
    async with Server(model_repository=repo) as server:
        response = await server.infer("two", "", InferRequest(inputs={expected_first: first, other: second}))
    np.testing.assert_array_equal(response.outputs["OUT__0"], first - second)
    np.testing.assert_array_equal(response.outputs["OUT__1"], first * second)


async def test_dict_input_module(repo: Path, add_model: ModelWriter) -> None:
    """A forward taking one Dict[str, Tensor] receives every input by name."""
    config = """
    platform: "pytorch_libtorch"
    input [{ name: "a" data_type: TYPE_FP32 dims: [2] }, { name: "b" data_type: TYPE_FP32 dims: [2] }]
    output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }]
    """
    add_model("dict_in", config, {"1/model.pt": save_script(DictIn())})
    inputs = {"a": np.array([1, 2], np.float32), "b": np.array([3, 4], np.float32)}
    async with Server(model_repository=repo) as server:
        response = await server.infer("dict_in", "", InferRequest(inputs=inputs))
    np.testing.assert_array_equal(response.outputs["OUTPUT__0"], [13, 24])


async def test_reduced_precision_keeps_declared_types(repo: Path, add_model: ModelWriter) -> None:
    """With precision bf16 the module computes in bfloat16 (its answer is the bfloat16 one, not
    the full-precision one), while clients still exchange FP32."""
    config = NET_CONFIG + 'parameters { key: "precision" value: { string_value: "bf16" } }\n'
    add_model("net_bf16", config, {"1/model.pt": save_script(Net())})
    x = rows(3)
    async with Server(model_repository=repo) as server:
        response = await server.infer("net_bf16", "", InferRequest(inputs={"INPUT__0": x}))
    out = response.outputs["OUTPUT__0"]
    assert out.dtype == np.float32
    with torch.inference_mode():
        in_bf16 = Net().eval().to(torch.bfloat16)(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    full = direct(Net(), x)
    np.testing.assert_allclose(out, in_bf16, rtol=1e-2, atol=1e-2)
    assert np.abs(out - full).max() > 1e-4, "the answer is full precision: bf16 was not used"


async def test_forward_error_fails_only_that_batch(repo: Path, add_model: ModelWriter) -> None:
    """A module raising (wrong inner shape) answers a ModelExecutionError with torch's reason,
    and the model keeps serving."""
    config = NET_CONFIG.replace("dims: [4]", "dims: [-1]")
    add_model("net", config, {"1/model.pt": save_script(Net())})
    async with Server(model_repository=repo) as server:
        from dagserve.errors import ModelExecutionError

        with pytest.raises(ModelExecutionError, match="PyTorch failed: .*shape"):
            await server.infer("net", "", InferRequest(inputs={"INPUT__0": np.ones((1, 5), np.float32)}))
        response = await server.infer("net", "", InferRequest(inputs={"INPUT__0": rows(1)}))
    assert response.outputs["OUTPUT__0"].shape == (1, 3)


@pytest.mark.parametrize(
    ("files", "config", "reason"),
    [
        ({}, NET_CONFIG, "no model file"),
        ({"1/model.py": b"x = 1\n"}, NET_CONFIG, "must define create_model() or exactly one nn.Module"),
        ({"1/model.pt": b"not an archive"}, NET_CONFIG, "is not a TorchScript archive"),
        (None, NET_CONFIG + "instance_group [{ kind: KIND_GPU }]", "finds no CUDA device"),
    ],
)
async def test_load_failures_are_explained(
    repo: Path, add_model: ModelWriter, files: dict[str, bytes] | None, config: str, reason: str
) -> None:
    """A model that cannot load is FAILED with a reason naming the problem."""
    if files is None:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        files = {"1/model.pt": save_script(Net())}  # type: ignore[dict-item]
    add_model("broken", config, files)
    async with Server(model_repository=repo, strict_readiness=False) as server:
        assert not server.model_ready("broken")
        [entry] = server.repository_index()
    assert reason in entry["reason"]


def test_missing_torch_names_the_extra(repo: Path, add_model: ModelWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch installed, loading says to install dagserve[torch]."""
    model_dir = add_model("net", NET_CONFIG, {"1/model.pt": save_script(Net())})
    config, _ = load_config(model_dir)
    context = ModelContext(
        name="net", version=1, config=config, model_dir=model_dir, version_dir=model_dir / "1",
        repository=repo, instance_name="net_0_0",
    )
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match=r"pip install 'dagserve\[torch\]'"):
        get_backend("pytorch").load(context)


def test_served_over_http_and_grpc(repo: Path, add_model: ModelWriter) -> None:
    """tritonclient over HTTP and gRPC gets the module's output from a TorchScript model."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    add_model("net", NET_CONFIG, {"1/model.pt": save_script(Net())})
    x = rows(2)
    expected = direct(Net(), x)
    with serve_in_thread(repo, metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        tensor = httpclient.InferInput("INPUT__0", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        got_http = http.infer("net", [tensor]).as_numpy("OUTPUT__0")
        http.close()
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        gtensor = grpcclient.InferInput("INPUT__0", [2, 4], "FP32")
        gtensor.set_data_from_numpy(x)
        got_grpc = grpc.infer("net", [gtensor]).as_numpy("OUTPUT__0")
        grpc.close()
    np.testing.assert_allclose(got_http, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_grpc, expected, rtol=1e-6, atol=1e-6)


OVERLAP_FILE = '''
import threading

import torch

BUILT = []
INSIDE = {"now": 0, "most": 0}
LOCK = threading.Lock()
BOTH_IN = threading.Barrier(2, timeout=120)


def create_model():
    BUILT.append(1)

    class Overlap(torch.nn.Module):
        def forward(self, x):
            with LOCK:
                INSIDE["now"] += 1
                INSIDE["most"] = max(INSIDE["most"], INSIDE["now"])
            try:
                BOTH_IN.wait()  # returns only once two forwards run at once
                return x + 0, torch.full((x.shape[0], 1), float(len(BUILT)))
            finally:
                with LOCK:
                    INSIDE["now"] -= 1

    return Overlap()
'''

OVERLAP_CONFIG = """
backend: "pytorch"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]
output [
  { name: "y" data_type: TYPE_FP32 dims: [2] },
  { name: "built" data_type: TYPE_FP32 dims: [1] }
]
instance_group [{ kind: KIND_CPU count: 1 }]
parameters { key: "batches_in_flight" value: { string_value: "2" } }
"""


async def test_one_instance_runs_two_batches_at_once(repo: Path, add_model: ModelWriter) -> None:
    """With ``batches_in_flight: 2`` one instance (the module built once) runs two requests'
    forwards at the same time: each forward waits at a barrier that opens only when two are
    inside, so both answer only if the instance took the second batch while the first ran."""
    add_model("overlap", OVERLAP_CONFIG, {"1/model.py": OVERLAP_FILE.encode()})
    inputs = [np.full((1, 2), i, np.float32) for i in range(2)]
    async with Server(model_repository=repo) as server:
        responses = [None, None]

        async def one(i: int) -> None:
            responses[i] = await server.infer("overlap", "", InferRequest(inputs={"x": inputs[i]}))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(one, i)
        stats = server.statistics("overlap")["model_stats"][0]
    for i, response in enumerate(responses):
        np.testing.assert_array_equal(response.outputs["y"], inputs[i])  # type: ignore[union-attr]
        np.testing.assert_array_equal(response.outputs["built"], [[1.0]])  # type: ignore[union-attr]
    assert stats["execution_count"] == 2


@pytest.mark.parametrize(("value", "reason"), [("0", "must be 1 or more"), ("two", "must be an integer")])
async def test_batches_in_flight_is_checked(repo: Path, add_model: ModelWriter, value: str, reason: str) -> None:
    config = OVERLAP_CONFIG.replace('string_value: "2"', f'string_value: "{value}"')
    add_model("overlap", config, {"1/model.py": OVERLAP_FILE.encode()})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        [entry] = server.repository_index()
    assert "batches_in_flight" in entry["reason"] and reason in entry["reason"]


def test_a_cpu_instance_runs_one_batch_at_a_time_by_default(repo: Path, add_model: ModelWriter) -> None:
    """On the CPU torch's own threads already use the cores: one batch at a time unless asked."""
    model_dir = add_model("net", NET_CONFIG, {"1/model.pt": save_script(Net())})
    config, _ = load_config(model_dir)
    context = ModelContext(
        name="net", version=1, config=config, model_dir=model_dir, version_dir=model_dir / "1",
        repository=repo, instance_name="net_0_0",
    )
    instance = get_backend("pytorch").load(context)
    assert instance.concurrency == 1
