"""``reshape`` on inputs and outputs: the model sees the reshape dims, clients and metadata see
the config dims, outputs are reshaped back; impossible reshapes are clear errors."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve import ConfigError
from dagserve.repository.loader import parse_config
from dagserve.testing import RunningServer, serve_in_thread

MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            seen = np.array(x.shape, np.int64)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (x * 2).reshape(x.shape[0], -1)),  # flat per item: the reshape dims
                pb_utils.Tensor("SEEN", np.broadcast_to(np.pad(seen, (0, 3 - len(seen)), constant_values=-7),
                                                        (x.shape[0], 3)).copy())]))
        return out
'''

# X: clients send [2, 3] per item, the model sees [6]; Y: the model returns [6], clients get [2, 3].
CONFIG = """
name: "reshaped"
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape { shape: [ 6 ] } } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape { shape: [ 6 ] } },
         { name: "SEEN" data_type: TYPE_INT64 dims: [ 3 ] } ]
"""

NATIVE = '''
import numpy as np


def infer(inputs):
    x = inputs["X"]
    return {"Y": x * 10, "NDIM": np.array([x.ndim], np.int64)}
'''

# Triton's idiom for a model without a batch dimension that takes a scalar: dims [1], reshape [].
SCALAR = """
backend: python
inputs: [{name: X, datatype: INT32, shape: [1], reshape: {shape: []}}]
outputs: [{name: Y, datatype: INT32, shape: [1], reshape: {shape: []}}, {name: NDIM, datatype: INT64, shape: [1]}]
"""

# Any number of elements in, pairs for the model: an odd count cannot be reshaped.
PAIRS = """
backend: python
inputs: [{name: X, datatype: INT32, shape: [-1], reshape: {shape: [-1, 2]}}]
outputs: [{name: Y, datatype: INT32, shape: [-1]}, {name: NDIM, datatype: INT64, shape: [1]}]
"""

PAIRS_MODEL = '''
import numpy as np


def infer(inputs):
    x = inputs["X"]
    return {"Y": x.sum(axis=1, dtype=np.int32), "NDIM": np.array([x.ndim], np.int64)}
'''


# Decoupled: N responses, each the model's [4] reshaped back to the clients' [2, 2].
STREAM = """
backend: python
model_transaction_policy: {decoupled: true}
inputs: [{name: N, datatype: INT32, shape: [1]}]
outputs: [{name: Y, datatype: INT32, shape: [2, 2], reshape: {shape: [4]}}]
"""

STREAM_MODEL = """
import numpy as np


def infer(inputs):
    for i in range(int(inputs["N"][0])):
        yield {"Y": np.arange(4, dtype=np.int32) + 10 * i}
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    for name, config, filename, model in (
        ("reshaped", CONFIG, "config.pbtxt", MODEL),
        ("scalar", SCALAR, "config.yaml", NATIVE),
        ("pairs", PAIRS, "config.yaml", PAIRS_MODEL),
        ("stream", STREAM, "config.yaml", STREAM_MODEL),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(model)
        (repo / name / filename).write_text(config)
    with serve_in_thread(repo, metrics=False) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_sees_reshape_dims_and_client_sees_config_dims(running: RunningServer, protocol: str) -> None:
    """A batch of 2 items of [2, 3] reaches the model as [2, 6]; Y comes back as [2, 2, 3]."""
    client_mod = httpclient if protocol == "http" else grpcclient
    url = running.http_url if protocol == "http" else running.grpc_url
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    with client_mod.InferenceServerClient(url) as client:
        tensor = client_mod.InferInput("X", [2, 2, 3], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("reshaped", [tensor])
        np.testing.assert_array_equal(result.as_numpy("SEEN"), [[2, 6, -7], [2, 6, -7]])
        np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)
        assert result.as_numpy("Y").shape == (2, 2, 3)


def test_metadata_and_config_show_the_config_dims(running: RunningServer) -> None:
    """Metadata lists the config dims (with the batch dimension); /config keeps the reshape."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        metadata = client.get_model_metadata("reshaped")
        assert [i["shape"] for i in metadata["inputs"]] == [[-1, 2, 3]]
        assert {o["name"]: o["shape"] for o in metadata["outputs"]}["Y"] == [-1, 2, 3]
        config = client.get_model_config("reshaped")
        assert config["input"][0]["reshape"] == {"shape": [6]}
        assert config["input"][0]["dims"] == [2, 3]


def test_scalar_reshape_without_batching(running: RunningServer) -> None:
    """dims [1] with reshape [] gives the model a 0-d array; the client gets [1] back."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        tensor = httpclient.InferInput("X", [1], "INT32")
        tensor.set_data_from_numpy(np.array([7], np.int32))
        result = client.infer("scalar", [tensor])
        assert result.as_numpy("NDIM")[0] == 0
        np.testing.assert_array_equal(result.as_numpy("Y"), [70])


def test_an_input_that_cannot_be_reshaped_is_a_400_naming_it(running: RunningServer) -> None:
    """Three elements cannot become pairs: 400 naming the model, the input and both shapes;
    four can, and the model sees [2, 2]."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        tensor = httpclient.InferInput("X", [3], "INT32")
        tensor.set_data_from_numpy(np.array([1, 2, 3], np.int32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("pairs", [tensor])
        assert info.value.status() == "400"
        assert "model 'pairs': input 'X' of shape [3] cannot be reshaped to the model's [-1, 2]" in info.value.message()
        tensor = httpclient.InferInput("X", [4], "INT32")
        tensor.set_data_from_numpy(np.array([1, 2, 3, 4], np.int32))
        result = client.infer("pairs", [tensor])
        np.testing.assert_array_equal(result.as_numpy("Y"), [3, 7])
        assert result.as_numpy("NDIM")[0] == 2


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ("inputs: [{name: X, datatype: FP32, shape: [2, 3], reshape: {shape: [5]}}]\noutputs: []",
         "input 'X': dims [2, 3] and reshape [5] hold different numbers of elements"),
        ("inputs: [{name: X, datatype: FP32, shape: [-1], reshape: {shape: [-1, -1]}}]\noutputs: []",
         "input 'X': reshape from [-1] to [-1, -1] is ambiguous"),
        ("inputs: []\noutputs: [{name: Y, datatype: FP32, shape: [-1, -1], reshape: {shape: [-1]}}]",
         "output 'Y': reshape from [-1] to [-1, -1] is ambiguous"),
        ("inputs: [{name: X, datatype: FP32, shape: [4], reshape: {shape: [0]}}]\noutputs: []",
         "dimension 0 is invalid"),
    ],
)
def test_impossible_reshapes_fail_the_load(tensor: str, message: str) -> None:
    """A reshape that can never hold, or is ambiguous, is a load error naming the tensor."""
    with pytest.raises(ConfigError, match="m/config.yaml") as info:
        parse_config(f"backend: python\n{tensor}\n", path=Path("m/config.yaml"), name="m")
    assert message in str(info.value)


def test_decoupled_responses_are_reshaped_back(running: RunningServer) -> None:
    """Each response a decoupled model sends reaches the client in the config dims."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        tensor = grpcclient.InferInput("N", [1], "INT32")
        tensor.set_data_from_numpy(np.array([3], np.int32))
        client.async_stream_infer("stream", [tensor])
        got = []
        for _ in range(3):
            result, error = results.get(timeout=60)
            assert error is None, error
            got.append(result.as_numpy("Y"))
        client.stop_stream()
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, (np.arange(4, dtype=np.int32) + 10 * i).reshape(2, 2))
