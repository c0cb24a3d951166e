"""A Triton ensemble mixing backends: a Python preprocessing step, an ONNX model (with
auto-completed config) and a FIL model, answering as the three run by hand."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import onnxruntime as ort
import pytest
import torch
import xgboost as xgb
from sklearn import datasets

from dagserve import InferRequest, Server
from dagserve.testing import serve_in_thread

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]

PREP = b'''
import numpy as np


class Model:
    def __init__(self, context):
        stats = np.load(context.version_dir / "stats.npz")
        self.mean, self.std = stats["mean"], stats["std"]

    def infer(self, inputs):
        return {"SCALED": ((inputs["RAW"] - self.mean) / self.std).astype(np.float32)}
'''

PREP_CONFIG = """
backend: "python"
max_batch_size: 64
input [{ name: "RAW" data_type: TYPE_FP32 dims: [30] }]
output [{ name: "SCALED" data_type: TYPE_FP32 dims: [30] }]
"""

EMBED_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""

TREES_CONFIG = """
backend: "fil"
max_batch_size: 64
input [{ name: "input__0" data_type: TYPE_FP32 dims: [8] }]
output [{ name: "output__0" data_type: TYPE_FP32 dims: [2] }]
parameters { key: "model_type" value: { string_value: "xgboost_json" } }
parameters { key: "output_class" value: { string_value: "true" } }
parameters { key: "predict_proba" value: { string_value: "true" } }
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""

ENSEMBLE_CONFIG = """
platform: "ensemble"
max_batch_size: 64
input [{ name: "RAW" data_type: TYPE_FP32 dims: [30] }]
output [{ name: "PROBA" data_type: TYPE_FP32 dims: [2] }]
ensemble_scheduling { step [
  { model_name: "prep" model_version: -1
    input_map { key: "RAW" value: "RAW" } output_map { key: "SCALED" value: "scaled" } },
  { model_name: "embed" model_version: -1
    input_map { key: "x" value: "scaled" } output_map { key: "y" value: "features" } },
  { model_name: "trees" model_version: -1
    input_map { key: "input__0" value: "features" } output_map { key: "output__0" value: "PROBA" } }
] }
"""


class Embed(torch.nn.Module):  # type: ignore[misc, name-defined]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc = torch.nn.Linear(30, 8)

    def forward(self, x: Any) -> Any:
        return torch.tanh(self.fc(x))


@pytest.fixture
def pipeline_repo(repo: Path, add_model: ModelWriter) -> tuple[Path, Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """The repository, the pipeline computed by hand, and sample rows."""
    x, y = datasets.load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    prep_dir = add_model("prep", PREP_CONFIG, {"1/model.py": PREP})
    np.savez(prep_dir / "1" / "stats.npz", mean=mean, std=std)
    embed_dir = add_model("embed", EMBED_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based ONNX exporter is deprecated
        torch.onnx.export(Embed().eval(), (torch.randn(2, 30),), str(embed_dir / "1" / "model.onnx"),
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(embed_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def features(rows: np.ndarray) -> np.ndarray:
        scaled = ((rows - mean) / std).astype(np.float32)
        return np.asarray(session.run(["y"], {"x": scaled})[0])

    clf = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(features(x), y)
    add_model("trees", TREES_CONFIG, {"1/xgboost.json": lambda p: clf.save_model(str(p))})
    add_model("pipeline", ENSEMBLE_CONFIG)
    return repo, lambda rows: clf.predict_proba(features(rows)), x


async def test_python_onnx_fil_ensemble(
    pipeline_repo: tuple[Path, Callable[[np.ndarray], np.ndarray], np.ndarray],
) -> None:
    """Concurrent requests through python -> onnx -> fil answer what the three steps give by
    hand."""
    repo, by_hand, x = pipeline_repo
    batches = [x[i * 5:(i + 1) * 5] for i in range(12)]
    answers: dict[int, np.ndarray] = {}
    async with Server(model_repository=repo) as server:

        async def one(i: int) -> None:
            response = await server.infer("pipeline", "", InferRequest(inputs={"RAW": batches[i]}))
            answers[i] = response.outputs["PROBA"]

        async with anyio.create_task_group() as tg:
            for i in range(len(batches)):
                tg.start_soon(one, i)
    for i, rows in enumerate(batches):
        np.testing.assert_allclose(answers[i], by_hand(rows), rtol=1e-4, atol=1e-5)


def test_ensemble_over_http(pipeline_repo: tuple[Path, Callable[[np.ndarray], np.ndarray], np.ndarray]) -> None:
    """tritonclient calls the mixed-backend ensemble over HTTP like any model."""
    import tritonclient.http as httpclient

    repo, by_hand, x = pipeline_repo
    rows = x[:7]
    with serve_in_thread(repo, grpc=False, metrics=False) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        tensor = httpclient.InferInput("RAW", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        got = client.infer("pipeline", [tensor]).as_numpy("PROBA")
        client.close()
    np.testing.assert_allclose(got, by_hand(rows), rtol=1e-4, atol=1e-5)
