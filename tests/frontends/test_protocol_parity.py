"""HTTP and gRPC return identical outputs, and the same errors, for the same request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "triton_python"

CASES = {
    "add_sub": {"INPUT0": np.arange(4, dtype=np.float32), "INPUT1": np.full(4, 0.5, np.float32)},
    "string_case": {"TEXT": np.array([[b"ab", "ünï".encode(), b""]], dtype=np.object_)},
    "batched_scale": {"X": np.arange(6, dtype=np.float32).reshape(2, 3)},
    "versioned": {"IN": np.zeros(1, np.int32)},
}


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        yield running


def call(module: object, url: str, model: str, inputs: dict[str, np.ndarray], **kwargs: object) -> dict[str, np.ndarray]:
    client = module.InferenceServerClient(url)  # type: ignore[attr-defined]
    tensors = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == np.object_ else httpclient.np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        result = client.infer(model, tensors, **kwargs)
        names = [o["name"] for o in result.get_response()["outputs"]] if module is httpclient else [
            o.name for o in result.get_response().outputs
        ]
        return {n: result.as_numpy(n) for n in names}
    finally:
        client.close()


@pytest.mark.parametrize("model", sorted(CASES))
def test_identical_outputs(running: RunningServer, model: str) -> None:
    over_http = call(httpclient, running.http_url, model, CASES[model])
    over_grpc = call(grpcclient, running.grpc_url, model, CASES[model])
    assert over_http.keys() == over_grpc.keys() and over_http
    for name in over_http:
        assert over_http[name].dtype == over_grpc[name].dtype, name
        np.testing.assert_array_equal(over_http[name], over_grpc[name])


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("nope", CASES["add_sub"]),
        ("add_sub", {"INPUT0": np.zeros(4, np.int32), "INPUT1": np.zeros(4, np.float32)}),
        ("raiser", {"MODE": np.array([2], np.int32)}),
    ],
)
def test_identical_errors(running: RunningServer, model: str, inputs: dict[str, np.ndarray]) -> None:
    messages = []
    for module, url in ((httpclient, running.http_url), (grpcclient, running.grpc_url)):
        with pytest.raises(InferenceServerException) as info:
            call(module, url, model, inputs)
        messages.append(info.value.message())
    assert messages[0] == messages[1]
