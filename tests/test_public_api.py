"""The public API: what ``import dagserve`` offers, ``Server`` built from a path, and models
added from Python objects (``Server.add_model``) served like models of a repository."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

import dagserve
from dagserve import (
    AlreadyExistsError,
    ConfigError,
    InferRequest,
    InvalidInputError,
    ModelExecutionError,
    Pipeline,
    Server,
    ServerOptions,
)
from dagserve.testing import serve_in_thread

pytestmark = pytest.mark.anyio

REPOS = Path(__file__).parent / "repos"

DOUBLE = {
    "max_batch_size": 8,
    "dynamic_batching": {},
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [2]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [2]}],
}


def test_every_public_name_is_importable_and_documented() -> None:
    """`__all__` lists what `dagserve` exports, each name resolves, and serve, its options and
    the whole error tree are among them."""
    for name in dagserve.__all__:
        assert getattr(dagserve, name) is not None, name
    for name in ("serve", "FrontendOptions", "ServerOptions", "call_model", "call_model_sync"):
        assert name in dagserve.__all__, name
    errors = set(dagserve.errors.__all__)
    assert errors <= set(dagserve.__all__), errors - set(dagserve.__all__)
    assert "infer" not in dagserve.__all__  # the BLS helper has a name that says what it does
    assert "TimeoutError" not in vars(dagserve.errors)  # no class shadows the builtin any more


def test_old_names_still_work_with_a_deprecation_warning() -> None:
    """Names users may have imported keep working, each with a DeprecationWarning naming the new one."""
    with pytest.warns(DeprecationWarning, match="call_model"):
        assert dagserve.infer is dagserve.call_model  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="call_model_sync"):
        assert dagserve.infer_sync is dagserve.call_model_sync  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="FrontendOptions"):
        assert dagserve.ServeOptions is dagserve.FrontendOptions  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="RequestTimeoutError"):
        from dagserve.errors import TimeoutError as Old
    assert Old is dagserve.RequestTimeoutError
    with pytest.warns(DeprecationWarning, match="RequestCancelledError"):
        from dagserve.errors import CancelledError as OldCancelled
    assert OldCancelled is dagserve.RequestCancelledError
    with pytest.raises(AttributeError):
        dagserve.no_such_name  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("as_type", [str, Path])
async def test_server_takes_a_repository_path(tmp_path: Path, as_type: type) -> None:
    """Server("models") and Server(Path("models")) serve that repository; other fields go along."""
    shutil.copytree(REPOS / "native_yaml" / "add_sub_native", tmp_path / "add_sub_native")
    async with Server(as_type(tmp_path), strict_readiness=False) as server:
        assert server.options.model_repository == tmp_path
        assert not server.options.strict_readiness
        a = np.arange(4, dtype=np.float32)
        response = await server.infer("add_sub_native", "", InferRequest(inputs={"INPUT0": a, "INPUT1": a}))
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], a + a)
    assert ServerOptions(model_repository=str(tmp_path)).model_repository == tmp_path  # type: ignore[arg-type]


def test_server_refuses_options_it_cannot_read() -> None:
    """A wrong options type, or options and fields together, is a TypeError naming the problem."""
    with pytest.raises(TypeError, match="ServerOptions or a repository path"):
        Server(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        Server(ServerOptions(), strict_readiness=False)


class Scaler:
    """A native model class: one instance per model instance, given its context."""

    def __init__(self, context: dagserve.backends.ModelContext) -> None:
        self.factor = float(context.config.parameters.get("factor", 3))

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"Y": inputs["X"] * self.factor}


class Caller:
    """Calls another model through BLS (dagserve.call_model) from an in-memory model."""

    def __init__(self, context: Any) -> None:
        self.context = context

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = await dagserve.call_model(self.context, "double", {"X": inputs["X"]})
        return {"Y": out["Y"] + 1}


async def test_add_model_serves_functions_classes_and_objects() -> None:
    """A function, a class and an object with infer are served as models: inputs validated
    against the config, batching, BLS between them, and a pipeline over them."""
    async with Server() as server:
        await server.add_model("double", lambda inputs: {"Y": inputs["X"] * 2}, DOUBLE)
        await server.add_model("scale", Scaler, {**DOUBLE, "parameters": {"factor": 10}})

        class Halver:
            def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return {"Y": inputs["X"] / 2}

        await server.add_model("half", Halver(), DOUBLE)
        await server.add_model("caller", Caller, DOUBLE)
        x = np.array([[1, 2]], dtype=np.float32)
        for name, expected in (("double", x * 2), ("scale", x * 10), ("half", x / 2), ("caller", x * 2 + 1)):
            response = await server.infer(name, "", InferRequest(inputs={"X": x}))
            np.testing.assert_array_equal(response.outputs["Y"], expected, err_msg=name)
        with pytest.raises(InvalidInputError, match="no input 'WRONG'"):
            await server.infer("double", "", InferRequest(inputs={"WRONG": x}))

        p = Pipeline("double_then_scale", max_batch_size=8)
        raw = p.input("RAW", "FP32", [2])
        d = p.step("d", "double", inputs={"X": raw})
        s = p.step("s", "scale", inputs={"X": d["Y"]})
        p.output("OUT", s["Y"])
        await server.add_model("double_then_scale", p)
        response = await server.infer("double_then_scale", "", InferRequest(inputs={"RAW": x}))
        np.testing.assert_array_equal(response.outputs["OUT"], x * 20)
        stats = server.statistics("double")["model_stats"][0]
        assert stats["inference_count"] >= 3  # direct, via BLS and via the pipeline


async def test_add_model_reports_bad_models_and_keeps_serving() -> None:
    """A taken name, a bad config, an object that is no model, or a model that fails to load
    is refused with a message saying why; nothing is left registered; a model's own error
    reaches the caller as a ModelExecutionError."""

    def broken(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise ValueError("no luck")

    class FailsToLoad:
        def __init__(self) -> None:
            raise RuntimeError("cannot start")

        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return inputs

    async with Server() as server:
        await server.add_model("broken", broken, DOUBLE)
        with pytest.raises(AlreadyExistsError, match="broken"):
            await server.add_model("broken", broken, DOUBLE)
        with pytest.raises(ConfigError, match="max_batch_size"):
            await server.add_model("typo", broken, {**DOUBLE, "max_batch_size": "lots"})
        with pytest.raises(ConfigError, match="needed"):
            await server.add_model("no_config", broken)
        with pytest.raises(ConfigError, match="class, an object with an infer method"):
            await server.add_model("number", 42, DOUBLE)
        with pytest.raises(ConfigError, match="cannot start"):
            await server.add_model("fails", FailsToLoad, DOUBLE)
        with pytest.raises(ConfigError, match="execution"):
            await server.add_model("isolated", broken, {**DOUBLE, "parameters": {"execution": "process"}})
        assert server.model_names() == ["broken"]
        with pytest.raises(ModelExecutionError, match="no luck"):
            await server.infer("broken", "", InferRequest(inputs={"X": np.zeros((1, 2), np.float32)}))


def test_in_memory_model_answers_tritonclient_over_http() -> None:
    """A model added in `setup` is served over HTTP like a repository model."""

    async def setup(server: Server) -> None:
        await server.add_model("double", lambda inputs: {"Y": inputs["X"] * 2}, DOUBLE)

    with serve_in_thread(None, grpc=False, metrics=False, setup=setup) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        x = np.array([[1.5, -2]], dtype=np.float32)
        inp = httpclient.InferInput("X", [1, 2], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("double", [inp])
        np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)
        assert client.get_model_metadata("double")["outputs"][0]["name"] == "Y"
