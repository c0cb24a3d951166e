"""The sklearn backend: estimators fitted here, saved with joblib or pickle, served without a
model.py, answering exactly as the estimator's own predict / predict_proba."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn import datasets, linear_model, pipeline, svm
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import StandardScaler

from dagserve.testing import serve_in_thread


def save(repo: Path, name: str, estimator: object, config: str, file: str = "model.joblib") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    if file.endswith(".joblib"):
        joblib.dump(estimator, repo / name / "1" / file)
    else:
        with (repo / name / "1" / file).open("wb") as f:
            pickle.dump(estimator, f)


def infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, datatype: str, outputs: list[str]) -> dict[str, np.ndarray]:
    t = httpclient.InferInput("input__0" if datatype != "BYTES" else "TEXT", list(x.shape), datatype)
    t.set_data_from_numpy(x)
    result = client.infer(model, [t], outputs=[httpclient.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def test_classifier_pipeline_auto_completes_and_answers_exactly(tmp_path: Path) -> None:
    """A fitted scaler + logistic regression Pipeline, config `backend: "sklearn"` only: the
    config is completed from the estimator (FP64 [4] in, predict INT64 [1], predict_proba
    FP64 [3], batching) and both outputs equal the estimator's own, over HTTP and gRPC."""
    x, y = datasets.load_iris(return_X_y=True)
    clf = pipeline.make_pipeline(StandardScaler(), linear_model.LogisticRegression(max_iter=500)).fit(x, y)
    repo = tmp_path / "repo"
    save(repo, "iris", clf, 'backend: "sklearn"\n')
    with serve_in_thread(repo, metrics=False) as running, httpclient.InferenceServerClient(running.http_url) as c:
        config = c.get_model_config("iris")
        assert config["max_batch_size"] == 64 and "dynamic_batching" in config
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("input__0", "TYPE_FP64", [4])]
        assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
            ("predict", "TYPE_INT64", [1]), ("predict_proba", "TYPE_FP64", [3])
        ]
        got = infer(c, "iris", x[::7], "FP64", ["predict", "predict_proba"])
        np.testing.assert_array_equal(got["predict"].ravel(), clf.predict(x[::7]))
        np.testing.assert_array_equal(got["predict_proba"], clf.predict_proba(x[::7]))
        with grpcclient.InferenceServerClient(running.grpc_url) as g:
            t = grpcclient.InferInput("input__0", [5, 4], "FP64")
            t.set_data_from_numpy(x[:5])
            answer = g.infer("iris", [t], outputs=[grpcclient.InferRequestedOutput("predict_proba")])
            np.testing.assert_array_equal(answer.as_numpy("predict_proba"), clf.predict_proba(x[:5]))
            assert answer.as_numpy("predict") is None  # only what was asked for


def test_regressor_from_pickle_with_declared_fp32_input(tmp_path: Path) -> None:
    """A pickled Ridge regressor with an FP32 input declared in config.pbtxt and no batching:
    predict equals the estimator's on the same FP32 rows."""
    x, y = datasets.load_diabetes(return_X_y=True)
    reg = linear_model.Ridge().fit(x, y)
    repo = tmp_path / "repo"
    save(repo, "ridge", reg, """
backend: "sklearn"
input [{ name: "input__0" data_type: TYPE_FP32 dims: [-1, 10] }]
output [{ name: "predict" data_type: TYPE_FP64 dims: [-1] }]
""", file="model.pkl")
    rows = x[:6].astype(np.float32)
    with serve_in_thread(repo, grpc=False, metrics=False) as running, httpclient.InferenceServerClient(running.http_url) as c:
        got = infer(c, "ridge", rows, "FP32", ["predict"])
    np.testing.assert_array_equal(got["predict"], reg.predict(rows))


def test_text_pipeline_takes_bytes_and_answers_string_labels(tmp_path: Path) -> None:
    """A TF-IDF + linear classifier on texts: a BYTES input, one text per row; string class
    labels come back as BYTES."""
    texts = ["great screen", "love it", "awful battery", "slow and bad", "really great", "bad bad"]
    labels = ["pos", "pos", "neg", "neg", "pos", "neg"]
    clf = pipeline.make_pipeline(TfidfVectorizer(), linear_model.LogisticRegression()).fit(texts, labels)
    repo = tmp_path / "repo"
    save(repo, "sentiment", clf, """
backend: "sklearn"
max_batch_size: 8
input [{ name: "TEXT" data_type: TYPE_STRING dims: [1] }]
""")
    queries = ["great battery", "bad screen"]
    with serve_in_thread(repo, grpc=False, metrics=False) as running, httpclient.InferenceServerClient(running.http_url) as c:
        assert c.get_model_config("sentiment")["output"][0]["data_type"] == "TYPE_STRING"
        got = infer(c, "sentiment", np.array([[q.encode()] for q in queries], dtype=object), "BYTES",
                    ["predict", "predict_proba"])
    assert got["predict"].ravel().tolist() == [p.encode() for p in clf.predict(queries)]
    np.testing.assert_array_equal(got["predict_proba"], clf.predict_proba(queries))


def test_outputs_the_estimator_cannot_give_fail_the_load(tmp_path: Path) -> None:
    """predict_proba on an SVC without probabilities, or an unknown output name, fails the
    model's load with the reason; the other model serves."""
    x, y = datasets.load_iris(return_X_y=True)
    repo = tmp_path / "repo"
    save(repo, "svc", svm.SVC().fit(x, y), """
backend: "sklearn"
max_batch_size: 4
input [{ name: "input__0" data_type: TYPE_FP64 dims: [4] }]
output [{ name: "predict_proba" data_type: TYPE_FP64 dims: [3] }]
""")
    save(repo, "typo", linear_model.LogisticRegression(max_iter=500).fit(x, y), """
backend: "sklearn"
max_batch_size: 4
input [{ name: "input__0" data_type: TYPE_FP64 dims: [4] }]
output [{ name: "predictions" data_type: TYPE_INT64 dims: [1] }]
""")
    save(repo, "ok", linear_model.LogisticRegression(max_iter=500).fit(x, y), 'backend: "sklearn"\n')
    with serve_in_thread(repo, http=False, grpc=False, metrics=False, strict_readiness=False) as running:
        reasons = {e["name"]: e["reason"] for e in running.server.repository_index()}
        assert "output 'predict_proba': the SVC has no predict_proba method" in reasons["svc"]
        assert "output 'predictions' is not one a scikit-learn model gives" in reasons["typo"]
        assert "predict, predict_proba" in reasons["typo"]
        assert running.server.model_ready("ok")
