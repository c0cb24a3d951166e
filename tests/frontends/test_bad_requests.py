"""Bad requests get a clear 400/INVALID_ARGUMENT (or a clear 500 for a model's fault) on both
protocols, and never wedge the model: each bad request is followed by a good one that must
succeed.

Bad values that tritonclient refuses to send (a priority that is a string, a negative
dimension) go over the wire as raw JSON or as a raw ``ModelInferRequest``; every good
request is sent with tritonclient.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "bad_requests"
TIMEOUT = 60.0  # seconds a good request may take on a busy machine; a wedged model never answers


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        for model in GOOD:
            assert running.server.get_version(model, "").ready, model
        yield running


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


@dataclass(frozen=True)
class Case:
    model: str
    inputs: tuple[Tensor, ...]
    status: int  # 400 or 500
    message: str  # a fragment both protocols' messages contain
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()


X = (Tensor("X", "FP32", [1, 2], [1.0, 2.0]),)
SEQ = (Tensor("X", "INT32", [1, 1], [1]),)

CASES = {
    # priority: an integer in 0..priority_levels (dyn and dyn_delayed have 2 levels)
    "priority-string": Case("dyn", X, 400, "parameter 'priority' must be an integer", {"priority": "high"}),
    "priority-float": Case("dyn", X, 400, "parameter 'priority' must be an integer", {"priority": 1.5}),
    "priority-bool": Case("dyn", X, 400, "parameter 'priority' must be an integer", {"priority": True}),
    "priority-negative": Case("dyn", X, 400, "parameter 'priority' must be an integer", {"priority": -1}),
    "priority-above-levels": Case("dyn", X, 400, "priority 3 is out of range (1 to 2)", {"priority": 3}),
    "priority-huge": Case("dyn", X, 400, "is out of range (1 to 2)", {"priority": 2**62}),
    "priority-queued-path": Case("dyn_delayed", X, 400, "priority 9 is out of range (1 to 2)", {"priority": 9}),
    "priority-unbatched": Case("plain", X, 400, "parameter 'priority' must be an integer", {"priority": "x"}),
    "priority-no-levels": Case("batched_plain", X, 400, "parameter 'priority' must be an integer",
                               {"priority": "x"}),
    "priority-pipeline": Case("prio_chain", X, 400, "model 'prio_chain': priority 3 is out of range (1 to 2)",
                              {"priority": 3}),
    # timeout: an integer number of microseconds
    "timeout-string": Case("dyn", X, 400, "parameter 'timeout' must be an integer", {"timeout": "soon"}),
    "timeout-negative": Case("dyn_delayed", X, 400, "parameter 'timeout' must be an integer", {"timeout": -5}),
    "binary-data-output": Case("dyn", X, 400, "'binary_data_output' must be true or false",
                               {"binary_data_output": "yes"}),
    # sequence parameters
    "sequence-id-negative": Case("accumulate", SEQ, 400, "parameter 'sequence_id' must be an integer",
                                 {"sequence_id": -3, "sequence_start": True}),
    "sequence-id-float": Case("accumulate", SEQ, 400, "parameter 'sequence_id' must be an integer",
                              {"sequence_id": 2.5, "sequence_start": True}),
    "sequence-start-string": Case("accumulate", SEQ, 400, "'sequence_start' must be true or false",
                                  {"sequence_id": 7, "sequence_start": "yes"}),
    "sequence-id-string-for-uint64": Case("accumulate", SEQ, 400,
                                          "model 'accumulate': sequence_id 'abc' is a string, but the model's "
                                          "CORRID control is UINT64", {"sequence_id": "abc", "sequence_start": True}),
    "sequence-without-id": Case("accumulate", SEQ, 400, "needs a non-zero 'sequence_id'"),
    # shapes: refused before anything is allocated
    "zero-by-huge": Case("plain", (Tensor("X", "FP32", [0, 2**40], []),), 400, "too large"),
    "huge-by-zero": Case("plain", (Tensor("X", "FP32", [2**33, 0], []),), 400, "too large"),
    "product-overflows": Case("plain", (Tensor("X", "FP32", [2**62, 2**62], [1.0]),), 400, "too large"),
    "negative-dim": Case("plain", (Tensor("X", "FP32", [-1, 2], [1.0, 2.0]),), 400, "negative dimension"),
    "huge-shape-little-data": Case("plain", (Tensor("X", "FP32", [100_000, 1000], [1.0]),), 400,
                                   "shape [100000, 1000] needs 100000000"),
    # outputs
    "undeclared-output": Case("optional_out", (Tensor("X", "FP32", [2], [1.0, 2.0]),), 400,
                              "model 'optional_out' has no output 'Z'", outputs=("Z",)),
    "output-not-returned": Case("forgetful", (Tensor("X", "FP32", [2], [1.0, 2.0]),), 500,
                                "model 'forgetful' did not return its output 'Z'", outputs=("Z",)),
    # a map whose items answer in different shapes: the model's fault, named precisely
    "ragged-map": Case("ragged_map", (Tensor("NS", "INT32", [3, 1], [2, 2, 5]),), 500,
                       "pipeline 'ragged_map', step 'make' (model 'ragged'): map item 2 returned output 'Y' "
                       "with shape [5], but item 0 returned shape [2]"),
}

GOOD: dict[str, dict[str, np.ndarray]] = {
    "dyn": {"X": np.array([[1.0, 2.0]], np.float32)},
    "dyn_delayed": {"X": np.array([[3.0]], np.float32)},
    "plain": {"X": np.array([[4.0, 5.0]], np.float32)},
    "accumulate": {"X": np.array([[6]], np.int32)},
    "forgetful": {"X": np.array([7.0], np.float32)},
    "optional_out": {"X": np.array([8.0], np.float32)},
    "batched_plain": {"X": np.array([[9.0]], np.float32)},
    "prio_chain": {"X": np.array([[10.0]], np.float32)},
    "ragged_map": {"NS": np.array([[3], [3]], np.int32)},
}
_sequence = iter(range(1000, 10**6))


# -- sending ----------------------------------------------------------------------------------
def send_http(url: str, case: Case) -> tuple[int, str]:
    body: dict[str, Any] = {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.data} for t in case.inputs]
    }
    if case.parameters:
        body["parameters"] = case.parameters
    if case.outputs:
        body["outputs"] = [{"name": name} for name in case.outputs]
    request = urllib.request.Request(
        f"http://{url}/v2/models/{case.model}/infer", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def _parameter(param: Any, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if value < 0:
            param.int64_param = value
        else:
            param.uint64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def send_grpc(url: str, case: Case) -> tuple[grpc.StatusCode, str]:
    request = pb.ModelInferRequest(model_name=case.model)
    for key, value in case.parameters.items():
        _parameter(request.parameters[key], value)
    for t in case.inputs:
        tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if t.datatype == "FP32":
            tensor.contents.fp32_contents.extend(t.data)
        else:
            tensor.contents.int_contents.extend(t.data)
    for name in case.outputs:
        request.outputs.add(name=name)
    with grpc.insecure_channel(url) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def good_request(module: Any, url: str, model: str) -> Any:
    """A valid request to ``model`` with tritonclient; a wedged model makes it time out."""
    kwargs: dict[str, Any] = {}
    if model == "accumulate":
        kwargs = {"sequence_id": next(_sequence), "sequence_start": True, "sequence_end": True}
    if model == "forgetful":
        kwargs["outputs"] = [module.InferRequestedOutput("Y")]  # it never returns Z
    if module is httpclient:
        client = httpclient.InferenceServerClient(url, connection_timeout=TIMEOUT, network_timeout=TIMEOUT)
    else:
        client = grpcclient.InferenceServerClient(url)
        kwargs["client_timeout"] = TIMEOUT
    tensors = []
    for name, array in GOOD[model].items():
        tensor = module.InferInput(name, list(array.shape), httpclient.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        return client.infer(model, tensors, **kwargs)
    finally:
        client.close()


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_request_then_good(running: RunningServer, name: str, protocol: str) -> None:
    """The bad request gets its clear error; a good request to the same model then succeeds."""
    case = CASES[name]
    if protocol == "http":
        status, message = send_http(running.http_url, case)
        assert status == case.status, message
        module: Any = httpclient
        url = running.http_url
    else:
        code, message = send_grpc(running.grpc_url, case)
        expected = grpc.StatusCode.INVALID_ARGUMENT if case.status == 400 else grpc.StatusCode.INTERNAL
        assert code == expected, message
        module, url = grpcclient, running.grpc_url
    assert case.message in message
    assert "internal server error" not in message
    result = good_request(module, url, case.model)
    assert result.as_numpy("TOTAL" if case.model == "accumulate" else "Y") is not None


@pytest.mark.parametrize("name", ["priority-float", "zero-by-huge", "ragged-map", "output-not-returned"])
def test_same_message_on_both_protocols(running: RunningServer, name: str) -> None:
    """HTTP and gRPC report a bad request with the same words."""
    _, over_http = send_http(running.http_url, CASES[name])
    _, over_grpc = send_grpc(running.grpc_url, CASES[name])
    assert over_http == over_grpc


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_repeated_bad_priorities_never_hold_an_instance(running: RunningServer, module: Any) -> None:
    """More refused requests than the model has instances leave it serving (the measured wedge
    took the one instance of a direct-path batcher for ever)."""
    url = running.http_url if module is httpclient else running.grpc_url
    for _ in range(5):
        with pytest.raises(InferenceServerException, match="out of range"):
            client = module.InferenceServerClient(url)
            tensor = module.InferInput("X", [1, 2], "FP32")
            tensor.set_data_from_numpy(GOOD["dyn"]["X"])
            try:
                client.infer("dyn", [tensor], priority=7)
            finally:
                client.close()
    assert good_request(module, url, "dyn").as_numpy("Y").tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_optional_output_not_produced_is_absent_on_both(running: RunningServer, module: Any) -> None:
    """A requested optional output that a skipped step did not produce is left out of the
    response on both protocols (as Triton answers: a response carries what was produced); when
    the step runs it is there."""
    url = running.http_url if module is httpclient else running.grpc_url
    client = module.InferenceServerClient(url)
    try:
        tensor = module.InferInput("X", [1], "FP32")
        tensor.set_data_from_numpy(GOOD["optional_out"]["X"])
        wanted = [module.InferRequestedOutput("EXTRA"), module.InferRequestedOutput("Y")]
        skipped = client.infer("optional_out", [tensor], outputs=wanted)
        assert skipped.as_numpy("EXTRA") is None
        assert skipped.as_numpy("Y").tolist() == [8.0]
        ran = client.infer("optional_out", [tensor], outputs=wanted, parameters={"extra": "yes"})
        assert ran.as_numpy("EXTRA").tolist() == [8.0]
    finally:
        client.close()


def executions(running: RunningServer, model: str) -> int:
    return int(running.server.statistics(model)["model_stats"][0]["execution_count"])


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_priority_through_a_pipeline(running: RunningServer, module: Any) -> None:
    """A pipeline passes the priority to every step: a step without priority levels takes any
    priority (as Triton), and a priority that a step with levels would refuse is refused before
    the first step runs."""
    url = running.http_url if module is httpclient else running.grpc_url
    client = module.InferenceServerClient(url)
    tensor = module.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(GOOD["prio_chain"]["X"])
    try:
        for priority in (0, 1, 2):
            assert client.infer("prio_chain", [tensor], priority=priority).as_numpy("Y").tolist() == [[10.0]]
        assert client.infer("batched_plain", [tensor], priority=7).as_numpy("Y").tolist() == [[10.0]]
        before = executions(running, "batched_plain")
        with pytest.raises(InferenceServerException, match=r"priority 3 is out of range \(1 to 2\)"):
            client.infer("prio_chain", [tensor], priority=3)
        assert executions(running, "batched_plain") == before
    finally:
        client.close()
