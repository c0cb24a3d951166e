"""End to end: the stock tritonclient.http talks to pipelines served over HTTP as to Triton."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "pipelines"
MODELS = (
    "preprocess",
    "classifier",
    "postprocess",
    "classify_ensemble",
    "classify_yaml",
    "checker",
    "slow",
    "adder",
    "guarded",
)


@pytest.fixture(scope="module")
def client() -> Iterator[httpclient.InferenceServerClient]:
    with serve_in_thread(
        REPO, grpc=False, metrics=False, model_control_mode="explicit", load_models=MODELS
    ) as running, httpclient.InferenceServerClient(running.http_url) as c:
        yield c


def classify(
    client: httpclient.InferenceServerClient, model: str, text: bytes, outputs: list[str] | None = None
) -> httpclient.InferResult:
    data = np.frombuffer(text, dtype=np.uint8)
    inputs = [httpclient.InferInput("RAW", list(data.shape), "UINT8")]
    inputs[0].set_data_from_numpy(data, binary_data=True)
    requested = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs] if outputs else None
    return client.infer(model, inputs, outputs=requested)


@pytest.mark.parametrize("model", ["classify_ensemble", "classify_yaml"])
def test_pipeline_answers_through_tritonclient(client: httpclient.InferenceServerClient, model: str) -> None:
    """Both the ensemble and the YAML pipeline answer with Triton's outputs over HTTP."""
    result = classify(client, model, b"\x01\x01\x01\x05")
    assert result.as_numpy("LABEL").tolist() == [b"dog"]
    assert result.as_numpy("SCORE").dtype == np.float32
    assert result.get_response()["model_name"] == model


def test_requested_output_subset(client: httpclient.InferenceServerClient) -> None:
    """Asking for one output returns just that one."""
    result = classify(client, "classify_ensemble", b"abc", outputs=["SCORE"])
    assert result.as_numpy("LABEL") is None and result.as_numpy("SCORE").shape == (1,)


def test_metadata_config_and_statistics(client: httpclient.InferenceServerClient) -> None:
    """Metadata, config and statistics of an ensemble parse in tritonclient as on Triton."""
    assert client.is_model_ready("classify_ensemble")
    meta = client.get_model_metadata("classify_ensemble")
    assert meta["platform"] == "ensemble"
    config = client.get_model_config("classify_ensemble")
    assert config["ensemble_scheduling"]["step"][1]["model_name"] == "classifier"
    before = client.get_inference_statistics("classify_yaml")["model_stats"][0]
    classify(client, "classify_yaml", b"xyz")
    stats = client.get_inference_statistics("classify_yaml")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert [s["name"] for s in stats["steps"]] == ["preprocess", "classifier", "postprocess"]
    for step, earlier in zip(stats["steps"], before["steps"], strict=True):
        assert step["success"]["count"] == earlier["success"]["count"] + 1


def test_step_errors_reach_the_client_with_their_status(client: httpclient.InferenceServerClient) -> None:
    """A bad value caught by a step is a 400 naming the pipeline, step and model."""
    x = np.array([-1], dtype=np.float32)
    inputs = [httpclient.InferInput("X", [1], "FP32")]
    inputs[0].set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer("guarded", inputs)
    assert (
        "pipeline 'guarded', step 'check' (model 'checker'): X must not be negative" in info.value.message()
    )
    assert info.value.status() == "400"


def test_parameters_pass_through_http(client: httpclient.InferenceServerClient) -> None:
    """Request parameters sent with tritonclient are accepted by a pipeline."""
    data = np.frombuffer(b"abc", dtype=np.uint8)
    inputs = [httpclient.InferInput("RAW", [3], "UINT8")]
    inputs[0].set_data_from_numpy(data)
    result = client.infer("classify_yaml", inputs, parameters={"tenant": "t1"})
    assert json.loads(json.dumps(result.get_response()))["model_name"] == "classify_yaml"
