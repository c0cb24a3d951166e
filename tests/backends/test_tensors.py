"""Tensors that are not numpy arrays (torch tensors, GPU tensors) as the engine passes them on:
their datatype is read without a copy, and ``to_host`` is where they become numpy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dagserve import InferRequest, Server
from dagserve.types import DataType, datatype_of, is_device_tensor, to_host

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float32", DataType.FP32), ("float16", DataType.FP16), ("bfloat16", DataType.BF16),
     ("int64", DataType.INT64), ("bool", DataType.BOOL), ("uint8", DataType.UINT8)],
)
def test_datatype_of_torch_tensors(dtype: str, expected: DataType) -> None:
    """A torch tensor's datatype is read from its dtype, both ways."""
    tensor = torch.zeros(2, dtype=getattr(torch, dtype))
    assert datatype_of(tensor) is expected
    assert expected.torch_dtype == tensor.dtype


def test_to_host_views_cpu_tensors_and_keeps_bf16_bits() -> None:
    """A CPU tensor becomes a numpy view of the same memory; BF16 comes back as its uint16 bit
    patterns, dagserve's host form of BF16."""
    tensor = torch.arange(4, dtype=torch.float32)
    array = to_host(tensor)
    tensor[0] = 42
    assert array[0] == 42 and not is_device_tensor(tensor)
    bf16 = to_host(torch.tensor([1.0, -2.0], dtype=torch.bfloat16))
    assert bf16.dtype == np.uint16 and bf16.tolist() == [0x3F80, 0xC000]
    plain = np.ones(3)
    assert to_host(plain) is plain


def test_request_datatype_reads_torch_inputs() -> None:
    """A request carrying a torch tensor (from an earlier pipeline step) knows its datatype."""
    request = InferRequest(inputs={"x": torch.ones(2, dtype=torch.int32)})
    assert request.datatype("x") is DataType.INT32


async def test_cpu_tensor_outputs_reach_clients_as_numpy(repo: Path, add_model: ModelWriter) -> None:
    """A model answering torch CPU tensors is checked against its config and answered as numpy."""
    source = (
        b"import torch\n"
        b"def infer(inputs):\n"
        b"    return {'y': torch.from_numpy(inputs['x']) * 2}\n"
    )
    config = (
        'backend: "python"\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]\n'
    )
    add_model("double", config, {"1/model.py": source})
    async with Server(model_repository=repo) as server:
        response = await server.infer("double", "", InferRequest(inputs={"x": np.array([1, 2, 3], np.float32)}))
    assert isinstance(response.outputs["y"], np.ndarray)
    np.testing.assert_array_equal(response.outputs["y"], [2, 4, 6])
