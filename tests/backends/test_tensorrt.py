"""The TensorRT backend, as far as it can be tested without TensorRT: the missing-package
error, lazy imports, and choosing an optimization profile."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dagserve import Server
from dagserve.backends.tensorrt import pick_profile
from dagserve.errors import InvalidInputError

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]

PLAN_CONFIG = """
platform: "tensorrt_plan"
max_batch_size: 8
input [{ name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [1000] }]
instance_group [{ kind: KIND_GPU gpus: [0] }]
"""


async def test_missing_tensorrt_fails_the_load_with_the_extra(repo: Path, add_model: ModelWriter) -> None:
    """A tensorrt_plan model without the tensorrt package is FAILED, saying to install
    dagserve[tensorrt]; the server itself starts."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    add_model("plan", PLAN_CONFIG, {"1/model.plan": b"not a real engine"})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        assert server.is_live()
        assert not server.model_ready("plan")
        [entry] = server.repository_index()
    assert "needs the Python package 'tensorrt'" in entry["reason"]
    assert "pip install 'dagserve[tensorrt]'" in entry["reason"]


def test_backend_modules_import_no_framework() -> None:
    """Importing every framework backend imports none of the frameworks (they load in load())."""
    code = (
        "import sys\n"
        "import dagserve.backends.torch, dagserve.backends.onnx, dagserve.backends.tensorrt, dagserve.backends.fil\n"
        "heavy = ('torch', 'onnxruntime', 'tensorrt', 'xgboost', 'lightgbm', 'treelite', 'cuml', 'cupy')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


PROFILES = [
    {"input": ((1, 3, 224, 224), (4, 3, 224, 224))},
    {"input": ((5, 3, 224, 224), (8, 3, 224, 224))},
]


@pytest.mark.parametrize(("batch", "expected"), [(1, 0), (4, 0), (5, 1), (8, 1)])
def test_pick_profile_takes_the_first_that_fits(batch: int, expected: int) -> None:
    """The first optimization profile whose min/max range admits the batch is chosen."""
    assert pick_profile({"input": (batch, 3, 224, 224)}, PROFILES) == expected


def test_pick_profile_explains_when_none_fits() -> None:
    """Shapes outside every profile are an input error listing the ranges."""
    with pytest.raises(InvalidInputError, match=r"fit no optimization profile.*profile 1: input \[5, 3, 224, 224\]"):
        pick_profile({"input": (9, 3, 224, 224)}, PROFILES)
