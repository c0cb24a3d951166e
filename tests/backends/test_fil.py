"""The FIL backend: XGBoost, LightGBM and scikit-learn forests trained here, served with Triton
FIL's parameters and output semantics, answering as the frameworks do."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import treelite
import xgboost as xgb
from sklearn import datasets, ensemble

from dagserve import InferRequest, Server
from dagserve.backends import get_backend
from dagserve.backends.base import ModelContext
from dagserve.errors import ConfigError
from dagserve.repository.loader import load_config
from dagserve.testing import serve_in_thread

pytestmark = pytest.mark.anyio

ModelWriter = Callable[..., Path]


def fil_config(features: int, outputs: int, **parameters: str) -> str:
    params = "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    return f"""
backend: "fil"
max_batch_size: 4096
input [{{ name: "input__0" data_type: TYPE_FP32 dims: [{features}] }}]
output [{{ name: "output__0" data_type: TYPE_FP32 dims: [{outputs}] }}]
dynamic_batching {{}}
{params}
"""


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_breast_cancer(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_diabetes(return_X_y=True)
    return x.astype(np.float32), y


async def predict(repo: Path, name: str, x: np.ndarray) -> np.ndarray:
    async with Server(model_repository=repo) as server:
        response = await server.infer(name, "", InferRequest(inputs={"input__0": x}))
    return response.outputs["output__0"]


def save_xgb(model: Any, filename: str) -> Callable[[Path], None]:
    return lambda path: model.save_model(str(path))


async def test_xgboost_binary_classifier_json(
    repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    """An XGBoost JSON classifier answers class ids (output_class) and [1-p, p] (predict_proba)
    equal to XGBoost's own predict and predict_proba."""
    x, y = cancer
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y)
    save = save_xgb(clf, "xgboost.json")
    add_model("cls", fil_config(30, 1, model_type="xgboost_json", output_class="true"), {"1/xgboost.json": save})
    add_model("proba", fil_config(30, 2, model_type="xgboost_json", output_class="true", predict_proba="true"),
              {"1/xgboost.json": save})
    async with Server(model_repository=repo) as server:
        classes = (await server.infer("cls", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
        proba = (await server.infer("proba", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
    assert classes.shape == (len(x), 1) and classes.dtype == np.float32
    np.testing.assert_array_equal(classes[:, 0], clf.predict(x))
    np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=1e-5, atol=1e-6)


async def test_xgboost_multiclass_ubj_and_threshold_free_argmax(
    repo: Path, add_model: ModelWriter, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    """An XGBoost UBJSON multiclass model gives one probability per class, and the argmax class
    without predict_proba."""
    x, y = iris
    clf = xgb.XGBClassifier(n_estimators=10, max_depth=2).fit(x, y)
    save = save_xgb(clf, "xgboost.ubj")
    add_model("proba", fil_config(4, 3, model_type="xgboost_ubj", output_class="true", predict_proba="true"),
              {"1/xgboost.ubj": save})
    add_model("cls", fil_config(4, 1, model_type="xgboost_ubj", output_class="true"), {"1/xgboost.ubj": save})
    async with Server(model_repository=repo) as server:
        proba = (await server.infer("proba", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
        classes = (await server.infer("cls", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
    np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes[:, 0], clf.predict(x))


async def test_threshold_moves_the_binary_decision(
    repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    """threshold is the positive-class probability a row must exceed to be class 1."""
    x, y = cancer
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y)
    add_model("strict", fil_config(30, 1, model_type="xgboost_json", output_class="true", threshold="0.9"),
              {"1/xgboost.json": save_xgb(clf, "xgboost.json")})
    classes = await predict(repo, "strict", x)
    np.testing.assert_array_equal(classes[:, 0], clf.predict_proba(x)[:, 1] > 0.9)


async def test_regressors_xgboost_and_lightgbm(
    repo: Path, add_model: ModelWriter, diabetes: tuple[np.ndarray, np.ndarray]
) -> None:
    """Regressors (output_class false) answer their prediction per row, as XGBoost and LightGBM do."""
    x, y = diabetes
    xreg = xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(x, y)
    lreg = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 15}, lgb.Dataset(x, y), 20)
    add_model("xreg", fil_config(10, 1, model_type="xgboost_json"), {"1/xgboost.json": save_xgb(xreg, "")})
    add_model("lreg", fil_config(10, 1, model_type="lightgbm"), {"1/model.txt": lambda p: lreg.save_model(str(p))})
    async with Server(model_repository=repo) as server:
        xout = (await server.infer("xreg", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
        lout = (await server.infer("lreg", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
    np.testing.assert_allclose(xout[:, 0], xreg.predict(x), rtol=1e-5)
    np.testing.assert_allclose(lout[:, 0], lreg.predict(x), rtol=1e-5)


async def test_lightgbm_binary_classifier(
    repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray]
) -> None:
    """A LightGBM text model classifies and scores as LightGBM does; model_type may be left out
    when the file has its default name."""
    x, y = cancer
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(x, y), 20)
    save = lambda p: booster.save_model(str(p))
    add_model("proba", fil_config(30, 2, output_class="true", predict_proba="true"), {"1/model.txt": save})
    p = booster.predict(x)
    out = await predict(repo, "proba", x)
    np.testing.assert_allclose(out, np.stack([1 - p, p], axis=1), rtol=1e-5, atol=1e-6)


async def test_sklearn_forest_through_treelite_checkpoint(
    repo: Path, add_model: ModelWriter, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    """A scikit-learn random forest converted to a Treelite checkpoint gives scikit-learn's
    predict_proba and predict."""
    x, y = iris
    forest = ensemble.RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y)
    save = lambda p: treelite.sklearn.import_model(forest).serialize(str(p))
    add_model("proba", fil_config(4, 3, model_type="treelite_checkpoint", output_class="true", predict_proba="true"),
              {"1/checkpoint.tl": save})
    add_model("cls", fil_config(4, 1, model_type="treelite_checkpoint", output_class="true"), {"1/checkpoint.tl": save})
    async with Server(model_repository=repo) as server:
        proba = (await server.infer("proba", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
        classes = (await server.infer("cls", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
    np.testing.assert_allclose(proba, forest.predict_proba(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes[:, 0], forest.predict(x))


@pytest.mark.parametrize("model_type", ["xgboost_json", "lightgbm"])
async def test_treelite_and_native_predictors_agree(
    repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray], model_type: str
) -> None:
    """The Treelite CPU path gives the framework's own results within float tolerance."""
    x, y = cancer
    if model_type == "lightgbm":
        booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 15)
        filename, save = "model.txt", (lambda p: booster.save_model(str(p)))
    else:
        clf = xgb.XGBClassifier(n_estimators=15, max_depth=4).fit(x, y)
        filename, save = "xgboost.json", save_xgb(clf, "")
    for predictor in ("native", "treelite"):
        add_model(predictor, fil_config(30, 2, model_type=model_type, output_class="true", predict_proba="true",
                                        cpu_predictor=predictor), {f"1/{filename}": save})
    async with Server(model_repository=repo) as server:
        native = (await server.infer("native", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
        tl = (await server.infer("treelite", "", InferRequest(inputs={"input__0": x}))).outputs["output__0"]
    np.testing.assert_allclose(tl, native, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (fil_config(12, 1, model_type="xgboost_json"), "the model reads 30 features, but input dims say 12"),
        (fil_config(30, 1, model_type="lightgbm"), "model file"),
        (fil_config(30, 1, model_type="catboost"), "model_type must be one of"),
        (fil_config(30, 1, model_type="xgboost_json", predict_proba="true"), "predict_proba needs output_class"),
        (fil_config(30, 3, model_type="xgboost_json", output_class="true", predict_proba="true")
         + 'model_warmup [{ name: "w" batch_size: 1 inputs { key: "input__0" value: '
         '{ data_type: TYPE_FP32 dims: [30] zero_data: true } } }]', "does not fit output 'output__0' dims [3]"),
    ],
)
async def test_load_failures_are_explained(
    repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray], config: str, reason: str
) -> None:
    """Wrong feature counts, files, parameters or output dims fail the load with the reason
    (the last one found by warmup)."""
    x, y = cancer
    clf = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y)
    add_model("bad", config, {"1/xgboost.json": save_xgb(clf, "")})
    async with Server(model_repository=repo, strict_readiness=False) as server:
        assert not server.model_ready("bad")
        [entry] = server.repository_index()
    assert reason in entry["reason"]


def test_missing_framework_names_the_extra(
    repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without XGBoost and Treelite, an XGBoost model's load says to install dagserve[fil]."""
    x, y = cancer
    clf = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y)
    model_dir = add_model("m", fil_config(30, 1, model_type="xgboost_json"), {"1/xgboost.json": save_xgb(clf, "")})
    config, _ = load_config(model_dir)
    context = ModelContext(name="m", version=1, config=config, model_dir=model_dir, version_dir=model_dir / "1",
                           repository=repo, instance_name="m_0_0")
    monkeypatch.setitem(sys.modules, "xgboost", None)
    monkeypatch.setitem(sys.modules, "treelite", None)
    with pytest.raises(ConfigError, match=r"'treelite' for xgboost_json models.*pip install 'dagserve\[fil\]'"):
        get_backend("fil").load(context)


def test_served_over_http_and_grpc(repo: Path, add_model: ModelWriter, cancer: tuple[np.ndarray, np.ndarray]) -> None:
    """tritonclient over HTTP and gRPC gets XGBoost's probabilities from a FIL model."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x, y = cancer
    clf = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)
    add_model("proba", fil_config(30, 2, model_type="xgboost_json", output_class="true", predict_proba="true"),
              {"1/xgboost.json": save_xgb(clf, "")})
    batch = x[:64]
    expected = clf.predict_proba(batch)
    with serve_in_thread(repo, metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        tensor = httpclient.InferInput("input__0", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        got_http = http.infer("proba", [tensor]).as_numpy("output__0")
        http.close()
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        gtensor = grpcclient.InferInput("input__0", list(batch.shape), "FP32")
        gtensor.set_data_from_numpy(batch)
        got_grpc = grpc.infer("proba", [gtensor]).as_numpy("output__0")
        grpc.close()
    np.testing.assert_allclose(got_http, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_grpc, expected, rtol=1e-5, atol=1e-6)
