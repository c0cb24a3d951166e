"""The example repository (examples/pipelines, what scripts/demo.sh serves) validates clean,
and each example pipeline answers the stock tritonclient with the right values."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from dagserve.cli import main
from dagserve.testing import RunningServer, serve_in_thread

EXAMPLES = Path(__file__).parent.parent / "examples"
REPO = EXAMPLES / "pipelines"
REQUESTS = EXAMPLES / "requests"


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, grpc=False, metrics=False) as server:
        yield server


@pytest.fixture(scope="module")
def client(running: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(running.http_url) as c:
        yield c


def tensor(name: str, array: np.ndarray, datatype: str) -> httpclient.InferInput:
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def executions(client: httpclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_example_repository_validates_clean(capsys: pytest.CaptureFixture[str]) -> None:
    """`dagserve validate examples/pipelines` finds no error and no warning."""
    assert main(["validate", str(REPO)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.startswith(("error:", "warning:"))]
    assert lines[-1].endswith("0 errors, 0 warnings")


def test_iris_chain_labels_each_flower(client: httpclient.InferenceServerClient) -> None:
    """standardize -> logistic regression -> label: one flower of each species, in one batch."""
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]], dtype=np.float32)
    result = client.infer("iris", [tensor("FEATURES", flowers, "FP32")])
    assert result.as_numpy("LABEL").ravel().tolist() == [b"setosa", b"versicolor", b"virginica"]
    np.testing.assert_allclose(result.as_numpy("SCORE").ravel(), [0.9847, 0.9146, 0.9883], atol=1e-3)
    probs = result.as_numpy("PROBS")
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_iris_probabilities_as_top_classes(client: httpclient.InferenceServerClient) -> None:
    """The classification extension on the pipeline's PROBS (labels from iris_logreg's
    label_filename): the two most probable species of each flower, best first."""
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]], dtype=np.float32)
    result = client.infer("iris", [tensor("FEATURES", flowers, "FP32")],
                          outputs=[httpclient.InferRequestedOutput("PROBS", binary_data=False, class_count=2)])
    top = result.as_numpy("PROBS")  # JSON BYTES: tritonclient gives str elements
    assert top.shape == (2, 2)
    assert [[v.split(":", 1)[1] for v in row] for row in top.tolist()] == [
        ["0:setosa", "1:versicolor"], ["2:virginica", "1:versicolor"]]
    assert float(top[0][0].split(":")[0]) == pytest.approx(0.9847, abs=1e-3)


def test_anomaly_converts_and_reports_only_when_asked(client: httpclient.InferenceServerClient) -> None:
    """Fahrenheit readings are converted only with unit=F, and REPORT exists only for a window
    with an outlier."""
    fahrenheit = np.array([70.2, 71.5, 69.1, 70.8, 72.0, 95.0, 69.5, 70.9, 71.8, 70.4], dtype=np.float32)
    result = client.infer("anomaly", [tensor("READINGS", fahrenheit, "FP32")], parameters={"unit": "F"})
    celsius = (fahrenheit.astype(np.float64) - 32) * 5 / 9
    assert result.as_numpy("MEDIAN")[0] == pytest.approx(np.median(celsius), abs=1e-4)
    assert result.as_numpy("ZMAX")[0] > 3.5
    report = result.as_numpy("REPORT")[0].decode()
    assert report.startswith("reading 5 (35.0 C) is an outlier")

    calm = np.array([21.0, 21.3, 20.8, 21.1, 21.2], dtype=np.float32)
    result = client.infer("anomaly", [tensor("READINGS", calm, "FP32")])  # no unit: Celsius as given
    assert result.as_numpy("MEDIAN")[0] == pytest.approx(21.1)
    assert result.as_numpy("ZMAX")[0] < 3.5
    assert result.as_numpy("REPORT") is None


def test_reviews_fan_out_scores_each_sentence_in_one_batch(client: httpclient.InferenceServerClient) -> None:
    """Each sentence is scored by its own call of sentiment; those calls share executions;
    the summary labels the review."""
    before = executions(client, "sentiment")
    text = np.array(
        [b"The screen is gorgeous. Setup was slow and confusing. Still, I love it! Not bad at all."],
        dtype=object,
    )
    result = client.infer("reviews", [tensor("TEXT", text, "BYTES")])
    assert result.as_numpy("SENTENCES").ravel().tolist() == [
        b"The screen is gorgeous.",
        b"Setup was slow and confusing.",
        b"Still, I love it!",
        b"Not bad at all.",
    ]
    np.testing.assert_allclose(result.as_numpy("SENTENCE_SCORES"), [[1.0], [-1.0], [1.0], [1.0]])
    assert result.as_numpy("LABEL").tolist() == [b"positive"]
    assert result.as_numpy("SCORE")[0] == pytest.approx(0.5)
    inferences, runs = (a - b for a, b in zip(executions(client, "sentiment"), before))
    assert inferences == 4 and runs < 4  # batched at the mapped model

    empty = client.infer("reviews", [tensor("TEXT", np.array([b"   "], dtype=object), "BYTES")])
    assert empty.as_numpy("LABEL").tolist() == [b"neutral"]
    assert empty.as_numpy("SENTENCE_SCORES").shape == (0, 1)


def test_add_sub_example_answers(client: httpclient.InferenceServerClient) -> None:
    """The Triton-form Python model of the README's quick start adds and subtracts."""
    a, b = np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)
    result = client.infer("add_sub", [tensor("INPUT0", a, "FP32"), tensor("INPUT1", b, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_every_pipeline_has_a_request_that_it_answers(running: RunningServer) -> None:
    """Each pipeline of the example repository has examples/requests/<name>.json, and every
    request there (what scripts/demo.sh posts) is answered with outputs."""
    pipelines = {
        p.parent.name
        for p in REPO.glob("*/config.yaml")
        if yaml.safe_load(p.read_text())["backend"] == "pipeline"
    }
    requests = {p.stem: p for p in REQUESTS.glob("*.json")}
    assert pipelines == {"iris", "anomaly", "reviews"} and pipelines <= set(requests)
    for model, path in sorted(requests.items()):
        request = urllib.request.Request(
            f"http://{running.http_url}/v2/models/{model}/infer",
            data=path.read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer: dict[str, Any] = json.loads(response.read())
        assert answer["model_name"] == model and answer["outputs"], model
