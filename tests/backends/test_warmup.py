"""Model warmup (Triton's model_warmup): synthetic requests on every instance before READY, and
a failing warmup makes the load FAILED with its reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dagserve import InferRequest, Server
from dagserve.engine.warmup import parse_warmup
from dagserve.errors import ConfigError
from dagserve.repository.loader import load_config

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]

RECORDER = b'''
import json

import numpy as np


class Model:
    def __init__(self, context):
        self.log = context.model_dir / "calls.jsonl"
        self.instance = context.instance_name

    def infer(self, inputs):
        x = inputs["INPUT0"]
        with open(self.log, "a") as f:
            f.write(json.dumps({"instance": self.instance, "shape": list(x.shape), "sum": float(x.sum())}) + "\\n")
        if not np.isfinite(x).all() or (x < 0).any():
            raise ValueError("negative or non-finite input")
        return {"OUTPUT0": x * 2}
'''


def config(warmup: str, *, instances: int = 1) -> str:
    return f"""
backend: "python"
max_batch_size: 8
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }}]
instance_group [{{ count: {instances} kind: KIND_CPU }}]
model_warmup [{warmup}]
"""


def sample(data: str, *, name: str = "w", batch_size: int = 1, count: int = 1, key: str = "INPUT0",
           dims: str = "[4]", data_type: str = "TYPE_FP32") -> str:
    return (f'{{ name: "{name}" batch_size: {batch_size} count: {count} inputs {{ key: "{key}" value: '
            f'{{ data_type: {data_type} dims: {dims} {data} }} }} }}')


def calls(model_dir: Path) -> list[dict[str, object]]:
    path = model_dir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_warmup_runs_on_every_instance_before_ready(repo: Path, add_model: ModelWriter) -> None:
    """Each instance runs the sample count times, as one batch of batch_size requests of zeros,
    before the model serves its first request."""
    model_dir = add_model("m", config(sample("zero_data: true", batch_size=3, count=2), instances=2),
                          {"1/model.py": RECORDER})
    async with Server(model_repository=repo) as server:
        assert server.model_ready("m")
        warmup_calls = calls(model_dir)
        await server.infer("m", "", InferRequest(inputs={"INPUT0": np.ones((1, 4), np.float32)}))
    assert len(warmup_calls) == 4
    assert {c["instance"] for c in warmup_calls} == {"m_0_0", "m_0_1"}
    assert all(c["shape"] == [3, 4] and c["sum"] == 0 for c in warmup_calls)


async def test_warmup_data_from_file_and_random(repo: Path, add_model: ModelWriter) -> None:
    """input_data_file reads raw little-endian elements from <model>/warmup/; random_data gives
    floats in [0, 1)."""
    raw = np.array([1, 2, 3, 4], "<f4").tobytes()
    from_file = add_model("file", config(sample('input_data_file: "raw.bin"')),
                          {"1/model.py": RECORDER, "warmup/raw.bin": raw})
    random = add_model("random", config(sample("random_data: true", batch_size=2)), {"1/model.py": RECORDER})
    async with Server(model_repository=repo):
        pass
    [file_call] = calls(from_file)
    [random_call] = calls(random)
    assert file_call["sum"] == 10
    assert random_call["shape"] == [2, 4] and 0 <= float(random_call["sum"]) < 8  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("warmup", "reason"),
    [
        (sample('input_data_file: "raw.bin"'), "warmup sample 'w' failed on instance 0"),
        (sample("zero_data: true", key="NOPE"), "the model has no input 'NOPE'"),
        (sample("zero_data: true", dims="[5]"), "dims [5] do not fit the input's dims [4]"),
        (sample("zero_data: true", data_type="TYPE_INT32"), "data_type TYPE_INT32, but the input is TYPE_FP32"),
        (sample("zero_data: true", batch_size=9), "batch_size 9 exceeds the model's max_batch_size 8"),
        (sample('input_data_file: "missing.bin"'), "cannot read input_data_file"),
    ],
)
async def test_failing_or_malformed_warmup_fails_the_load(
    repo: Path, add_model: ModelWriter, warmup: str, reason: str
) -> None:
    """A warmup the model fails (negative input) or one that is malformed makes the version
    FAILED with a reason naming the sample, and the model never serves."""
    raw = np.array([-1, 0, 0, 0], "<f4").tobytes()
    add_model("m", config(warmup), {"1/model.py": RECORDER, "warmup/raw.bin": raw})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        assert not server.model_ready("m")
        [entry] = server.repository_index()
    assert entry["state"] == "UNAVAILABLE"
    assert reason in entry["reason"]


def test_native_yaml_warmup_and_bytes_zero_data(repo: Path) -> None:
    """The YAML form takes the same fields; BYTES zero data is empty strings."""
    model_dir = repo / "text"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(
        "backend: python\n"
        "inputs: [{name: TEXT, datatype: BYTES, shape: [2]}]\n"
        "outputs: [{name: OUT, datatype: BYTES, shape: [2]}]\n"
        "model_warmup:\n"
        "  - {name: empty, batch_size: 1, inputs: {TEXT: {data_type: TYPE_STRING, dims: [2], zero_data: true}}}\n"
    )
    parsed, _ = load_config(model_dir)
    [warm] = parse_warmup(parsed, model_dir, "model 'text'")
    [request] = warm.requests
    assert request.inputs["TEXT"].tolist() == [b"", b""]
    bad = parsed.model_copy(update={"model_warmup": ({"name": "x", "inputs": {}, "extra": 1},)})
    with pytest.raises(ConfigError, match=r"model_warmup\[0\]: unknown field\(s\) extra"):
        parse_warmup(bad, model_dir, "model 'text'")
