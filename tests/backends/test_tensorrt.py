"""The TensorRT backend, as far as it can be tested without TensorRT: the missing-package
error, lazy imports, choosing an optimization profile, and auto-completing a config from an
engine's description over a stand-in ``tensorrt`` module (FakeTensorRT, below: TensorRT cannot
be installed here)."""

from __future__ import annotations

import enum
import importlib.util
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dagserve import Server
from dagserve.backends import complete_config
from dagserve.backends import tensorrt as tensorrt_backend
from dagserve.backends.tensorrt import pick_profile
from dagserve.errors import ConfigError, InvalidInputError
from dagserve.repository.config import ModelConfig
from dagserve.repository.loader import scan
from dagserve.types import DataType

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


# -- auto-complete, against a stand-in for TensorRT ------------------------------------------------
class FakeTensorRT(types.ModuleType):
    """A stand-in for the ``tensorrt`` package, which cannot be installed where dagserve is
    developed and tested (it needs a GPU and NVIDIA's wheels): it "deserializes" any plan into
    an engine with the given tensors, answering the TensorRT 10 calls auto-complete makes
    (num_io_tensors, get_tensor_name / mode / dtype / shape, optimization profiles). It proves
    how dagserve turns an engine's description into a config, not that a real engine loads."""

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode(enum.Enum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = np.float32
        HALF = np.float16
        INT64 = np.int64
        BF16 = "bf16"

    def __init__(self, tensors: list[tuple[str, str, str, tuple[int, ...]]], profile_max: list[int]) -> None:
        super().__init__("tensorrt")
        self.tensors = tensors  # (name, "INPUT" | "OUTPUT", DataType name, shape)
        self.profile_max = profile_max  # each profile's max batch (for every input)
        fake = self

        class Engine:
            num_io_tensors = len(tensors)
            num_optimization_profiles = len(profile_max)

            def get_tensor_name(self, i: int) -> str:
                return tensors[i][0]

            def _find(self, name: str) -> tuple[str, str, str, tuple[int, ...]]:
                return next(t for t in tensors if t[0] == name)

            def get_tensor_mode(self, name: str) -> Any:
                return fake.TensorIOMode[self._find(name)[1]]

            def get_tensor_dtype(self, name: str) -> Any:
                return fake.DataType[self._find(name)[2]]

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return self._find(name)[3]

            def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
                rest = tuple(d for d in self._find(name)[3][1:])
                return [(1, *rest), (1, *rest), (fake.profile_max[profile], *rest)]

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, plan: bytes) -> Any:
                return Engine() if plan == b"a serialized engine" else None

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: Any) -> Any:
        if dtype.name == "BF16":
            raise TypeError("no numpy type")
        return dtype.value


def _plan_dir(tmp_path: Path, plan: bytes = b"a serialized engine") -> Path:
    (tmp_path / "plan" / "1").mkdir(parents=True)
    (tmp_path / "plan" / "1" / "model.plan").write_bytes(plan)
    return tmp_path


def _completed(tmp_path: Path) -> ModelConfig:
    """The config the server would serve the repository's one model with: generated for the
    directory (no config file), then auto-completed by its backend."""
    source = scan(tmp_path)["plan"]
    assert source.config_generated
    return complete_config(source.config, source.path, source.versions)


def test_a_plan_without_config_is_completed_from_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.plan with no config: inputs, outputs and their datatypes come from the engine, the
    batch dimension (dynamic in every tensor) is dropped from dims, max_batch_size is the
    largest batch the profiles admit, dynamic batching is on — over a stand-in for TensorRT."""
    trt = FakeTensorRT([("images", "INPUT", "FLOAT", (-1, 3, 8, 8)), ("mask", "INPUT", "INT64", (-1, 8)),
                        ("scores", "OUTPUT", "HALF", (-1, 10)), ("embedding", "OUTPUT", "BF16", (-1, 4))], [16, 32])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    config = _completed(_plan_dir(tmp_path))
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert config.dynamic_batching is not None
    assert [(t.name, t.data_type, t.dims) for t in config.input] == [
        ("images", DataType.FP32, (3, 8, 8)), ("mask", DataType.INT64, (8,))]
    assert [(t.name, t.data_type, t.dims) for t in config.output] == [
        ("scores", DataType.FP16, (10,)), ("embedding", DataType.BF16, (4,))]


def test_a_fixed_shape_plan_is_completed_without_batching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine with a fixed first dimension does not batch: max_batch_size 0, full dims."""
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(
        [("x", "INPUT", "FLOAT", (2, 3)), ("y", "OUTPUT", "FLOAT", (2, 3))], [1]))
    config = _completed(_plan_dir(tmp_path))
    assert config.max_batch_size == 0 and config.dynamic_batching is None
    assert [(t.name, t.dims) for t in (*config.input, *config.output)] == [("x", (2, 3)), ("y", (2, 3))]


def test_an_unreadable_plan_is_left_to_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan TensorRT cannot deserialize leaves the config uncompleted (no inputs), and the
    direct call says why — over a stand-in for TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT([], [1]))
    config = _completed(_plan_dir(tmp_path, b"garbage"))
    assert config.input == () and config.output == ()
    with pytest.raises(ConfigError, match="TensorRT cannot deserialize"):
        tensorrt_backend.complete_config(config, tmp_path / "plan" / "1")


def test_without_tensorrt_auto_complete_says_what_to_install(tmp_path: Path) -> None:
    """Without the tensorrt package the hook names it and the extra that installs it."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    config = _completed(_plan_dir(tmp_path))
    with pytest.raises(ConfigError, match=r"needs the Python package 'tensorrt'.*pip install 'dagserve\[tensorrt\]'"):
        tensorrt_backend.complete_config(config, tmp_path / "plan" / "1")
