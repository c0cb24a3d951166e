"""Triton's model loading API from a Python model: ``pb_utils.load_model`` (plain, with a
config override, with override files), ``unload_model`` (with ``unload_dependents``) and
``is_model_ready``, called from ``execute`` of ``tests/repos/model_control/controller``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "model_control"


def call(client: httpclient.InferenceServerClient, action: str, name: str, version: str = "") -> str:
    tensors = []
    for key, value in (("ACTION", action), ("NAME", name), ("VERSION", version)):
        tensor = httpclient.InferInput(key, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
        tensors.append(tensor)
    result = client.infer("controller", tensors).as_numpy("RESULT")
    assert result is not None
    return str(result[0].decode())


def scaled(client: httpclient.InferenceServerClient, model: str) -> list[float]:
    x = httpclient.InferInput("X", [2], "FP32")
    x.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
    y = client.infer(model, [x]).as_numpy("Y")
    assert y is not None
    return [float(v) for v in y]


@pytest.fixture
def explicit() -> Iterator[tuple[RunningServer, httpclient.InferenceServerClient]]:
    with serve_in_thread(REPO, grpc=False, metrics=False, model_control_mode="explicit",
                         load_models=("controller",)) as running:
        yield running, httpclient.InferenceServerClient(running.http_url)


def test_load_is_ready_and_unload_from_a_model(explicit: tuple[RunningServer, httpclient.InferenceServerClient]) -> None:
    """The controller loads target (then it serves), sees it ready, and unloads it."""
    _, client = explicit
    assert call(client, "ready", "target") == "False"
    assert call(client, "load", "target") == "ok"
    assert client.is_model_ready("target")
    assert call(client, "ready", "target") == "True"
    assert call(client, "ready", "target", "1") == "True"
    assert call(client, "ready", "target", "7") == "False"
    assert call(client, "ready", "nowhere") == "False"
    assert scaled(client, "target") == [2.0, 4.0]
    assert call(client, "unload", "target") == "ok"
    assert not client.is_model_ready("target")
    assert call(client, "ready", "target") == "False"


def test_load_with_config_and_files(explicit: tuple[RunningServer, httpclient.InferenceServerClient]) -> None:
    """A config override changes the loaded model; files plus a config make a new model."""
    _, client = explicit
    assert call(client, "load_config", "target") == "ok"
    assert scaled(client, "target") == [3.0, 6.0]
    assert call(client, "load_files", "made") == "ok"
    assert scaled(client, "made") == [10.0, 20.0]
    assert call(client, "load_bad_files", "made") == (
        "failed to load model 'made', files should be a dictionary of file paths and file contents"
    )


def test_unload_dependents_and_errors(explicit: tuple[RunningServer, httpclient.InferenceServerClient]) -> None:
    """Loading a pipeline loads its member; unload_dependents unloads both; failures raise
    TritonModelException with Triton's prefix and the reason."""
    _, client = explicit
    assert call(client, "load", "chain") == "ok"
    assert client.is_model_ready("target") and client.is_model_ready("chain")
    assert call(client, "unload_dependents", "chain") == "ok"
    assert not client.is_model_ready("chain") and not client.is_model_ready("target")
    assert call(client, "load", "nowhere") == "Failed to load model: no model 'nowhere' in the repository"
    assert call(client, "unload", "nowhere") == "Failed to unload model: model 'nowhere' is not loaded"
    assert call(client, "ready", "target", "x1") == (
        "failed to get model version from specified version string 'x1', version should be an integral value > 0"
    )


def test_load_needs_explicit_model_control() -> None:
    """In model control mode none the calls fail naming the mode; readiness still answers."""
    with serve_in_thread(REPO, grpc=False, metrics=False) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        loaded = call(client, "load", "target")
        unloaded = call(client, "unload", "target")
        ready = call(client, "ready", "target")
    assert loaded.startswith("Failed to load model: cannot load models") and "explicit" in loaded
    assert unloaded.startswith("Failed to unload model: cannot unload models") and "explicit" in unloaded
    assert ready == "True"
