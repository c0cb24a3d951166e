"""Triton Python-backend models behave as on Triton, seen through the real tritonclient over
HTTP and gRPC: error messages, BLS errors, decoupled BLS, request parameters, readiness."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "dropin"
PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        yield running


def _client(running: RunningServer, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(running.http_url)
    return grpcclient.InferenceServerClient(running.grpc_url)


def _int_input(protocol: str, name: str, value: int) -> Any:
    module = httpclient if protocol == "http" else grpcclient
    tensor = module.InferInput(name, [1], "INT32")
    tensor.set_data_from_numpy(np.array([value], np.int32))
    return tensor


def _failure(running: RunningServer, protocol: str, model: str, mode: int) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        _client(running, protocol).infer(model, [_int_input(protocol, "MODE", mode)])
    return info.value


# ----------------------------------------------------------------------------- model errors


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exception_in_execute_reaches_the_client_with_its_message(
    running: RunningServer, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception raised in execute answers Triton's message (instance, type, text) with
    status INTERNAL / 500; its traceback is in the server log under the quoted error id."""
    with caplog.at_level(logging.ERROR, logger="dagserve.backends.python"):
        error = _failure(running, protocol, "fails", 1)
    message = error.message()
    prefix = "Failed to process the request(s) for model 'fails_0_0', message: ValueError: mode 1 is not supported"
    assert message.startswith(prefix), message
    assert error.status() in ("500", "StatusCode.INTERNAL")
    assert "Traceback" not in message and "model.py" not in message
    error_id = message.rsplit("error id ", 1)[1].split(":")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None, "the traceback is logged under the error id"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_model_exception_keeps_its_message(running: RunningServer, protocol: str) -> None:
    """pb_utils.TritonModelException raised in execute is reported like any exception."""
    message = _failure(running, protocol, "fails", 3).message()
    assert "for model 'fails_0_0', message: TritonModelException: mode 3 broke the model" in message


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mode", "message", "http_status", "grpc_status"),
    [(2, "mode 2 is refused", "400", "StatusCode.INVALID_ARGUMENT"), (4, "mode 4 went wrong", "500", "StatusCode.INTERNAL")],
)
def test_triton_error_response_keeps_message_and_code(
    running: RunningServer, protocol: str, mode: int, message: str, http_status: str, grpc_status: str
) -> None:
    """A TritonError response reaches the client with exactly its message, its code mapped."""
    error = _failure(running, protocol, "fails", mode)
    assert error.message() == message
    assert error.status() == (http_status if protocol == "http" else grpc_status)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("mode", "message", "code"),
    [
        (1, "Failed to process the request(s) for model 'fails_0_0', message: ValueError: mode 1 is not supported", 1),
        (2, "mode 2 is refused", 3),
        (3, "Failed to process the request(s) for model 'fails_0_0', message: TritonModelException: mode 3 broke", 1),
        (4, "mode 4 went wrong", 1),
        (0, "", -1),
    ],
)
def test_bls_sees_the_callees_error_unchanged(
    running: RunningServer, protocol: str, mode: int, message: str, code: int
) -> None:
    """A BLS caller reads the callee's own message in error().message(), and its code."""
    result = _client(running, protocol).infer("bls_errors", [_int_input(protocol, "MODE", mode)])
    got = result.as_numpy("MESSAGE")[0].decode()
    direct = "" if mode == 0 else _failure(running, protocol, "fails", mode).message()
    if mode in (1, 3):  # same text as a direct call, but each failure has its own error id
        assert got.startswith(message) and got.split("\n\n")[0] == direct.split("\n\n")[0]
    else:
        assert got == message == direct
    assert int(result.as_numpy("CODE")[0]) == code


# --------------------------------------------------------------------------- decoupled BLS


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["bls_ticks", "bls_ticks_async"])
@pytest.mark.parametrize(
    ("n", "values", "empty", "errors"),
    [
        (3, [10, 11, 12], 1, ""),
        (0, [], 1, ""),
        (-2, [], 0, "negative count -2"),
        (99, [10, 11], 0, "message: RuntimeError: ticker cannot count to 99"),
    ],
)
def test_bls_decoupled_iterates_every_response(
    running: RunningServer, protocol: str, model: str, n: int, values: list[int], empty: int, errors: str
) -> None:
    """exec(decoupled=True) / await async_exec(decoupled=True) give an iterator over each
    response of the decoupled callee, ending with its final (empty) response; a callee's
    error response, or its exception after some responses, arrives as an error response."""
    result = _client(running, protocol).infer(model, [_int_input(protocol, "N", n)])
    assert result.as_numpy("VALUES").tolist() == values
    assert int(result.as_numpy("EMPTY")[0]) == empty
    got = result.as_numpy("ERRORS")[0].decode()
    assert (errors in got) if errors else got == ""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blocking_decoupled_bls_streams_each_response(running: RunningServer, protocol: str, tmp_path: Path) -> None:
    """exec(decoupled=True) yields each response as the callee sends it: this callee sends
    its next response only after the caller acknowledged the previous one."""
    result = _client(running, protocol).infer(
        "bls_live", [_int_input(protocol, "N", 4)], parameters={"mode": "handshake", "dir": str(tmp_path)}
    )
    assert result.as_numpy("ERRORS")[0].decode() == ""
    assert result.as_numpy("VALUES").tolist() == [0, 1, 2, 3]


def test_cancelling_a_decoupled_bls_iterator_stops_the_callee(running: RunningServer, tmp_path: Path) -> None:
    """cancel() on the iterator ends the iteration and the callee's sender reports
    is_cancelled(), so it stops long before its 6000 responses."""
    result = _client(running, "grpc").infer(
        "bls_live", [_int_input("grpc", "N", 0)], parameters={"mode": "endless", "dir": str(tmp_path)}
    )
    assert result.as_numpy("VALUES").tolist() == [0, 1, 2]
    stopped = tmp_path / "stopped"
    deadline = time.monotonic() + 60
    while not stopped.exists():
        assert time.monotonic() < deadline, "the callee never saw the cancellation"
        time.sleep(0.02)
    assert int(stopped.read_text()) < 6000


# ------------------------------------------------------------------------ request parameters


def _params(running: RunningServer, protocol: str, parameters: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    client = _client(running, protocol)
    module = httpclient if protocol == "http" else grpcclient
    outputs = [module.InferRequestedOutput("PARAMS", **({"binary_data": True} if protocol == "http" else {}))]
    result = client.infer("params", [_int_input(protocol, "X", 0)], outputs=outputs, parameters=parameters, **kwargs)
    return json.loads(result.as_numpy("PARAMS")[0])  # type: ignore[no-any-return]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_parameters_keep_their_types(running: RunningServer, protocol: str) -> None:
    """request.parameters() is the JSON of the user's parameters, string, int, bool and float
    as sent."""
    sent = {"text": "hello", "count": 7, "negative": -3, "flag": True, "off": False, "ratio": 0.25}
    assert _params(running, protocol, sent) == sent


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_parameters_leave_out_triton_plumbing(running: RunningServer, protocol: str) -> None:
    """Parameters Triton consumes itself (priority, timeout, binary_data_output) are not shown
    to the model, as on Triton."""
    got = _params(running, protocol, {"user": "u"}, priority=1, timeout=60_000_000)
    assert got == {"user": "u"}


def test_request_parameters_without_binary_output_flag(running: RunningServer) -> None:
    """binary_data_output, set by tritonclient's HTTP request, never reaches the model."""
    body = {
        "inputs": [{"name": "X", "datatype": "INT32", "shape": [1], "data": [0]}],
        "parameters": {"binary_data_output": False, "k": "v"},
    }
    r = httpx.post(f"http://{running.http_url}/v2/models/params/infer", json=body)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["outputs"][0]["data"][0]) == {"k": "v"}


@pytest.mark.parametrize("value", [{"nested": 1}, [1, 2], None])
def test_object_or_array_parameter_is_refused(running: RunningServer, value: Any) -> None:
    """A request parameter that is an object, array or null answers 400 naming it, as Triton."""
    body = {"inputs": [{"name": "X", "datatype": "INT32", "shape": [1], "data": [0]}], "parameters": {"bad": value}}
    r = httpx.post(f"http://{running.http_url}/v2/models/params/infer", json=body)
    assert r.status_code == 400
    assert "parameter 'bad' has invalid type" in r.json()["error"]
    ok = httpx.post(f"http://{running.http_url}/v2/models/params/infer", json=body | {"parameters": {"good": 1}})
    assert ok.status_code == 200


def test_triton_prefixed_parameter_is_refused(running: RunningServer) -> None:
    """A request parameter named triton_* answers 400 / INVALID_ARGUMENT with Triton's message
    (tritonclient refuses to send one, so this speaks the wire protocols directly)."""
    import grpc

    from dagserve._proto import grpc_service_pb2 as pb
    from dagserve._proto import grpc_service_pb2_grpc as pb_grpc

    reserved = "parameter keys starting with 'triton_' are reserved for Triton usage"
    body = {"inputs": [{"name": "X", "datatype": "INT32", "shape": [1], "data": [0]}], "parameters": {"triton_x": 1}}
    r = httpx.post(f"http://{running.http_url}/v2/models/params/infer", json=body)
    assert r.status_code == 400 and reserved in r.json()["error"]
    request = pb.ModelInferRequest(model_name="params")
    request.inputs.add(name="X", datatype="INT32", shape=[1]).contents.int_contents.append(0)
    request.parameters["triton_x"].int64_param = 1
    with grpc.insecure_channel(running.grpc_url) as channel, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reserved in str(info.value.details())


# --------------------------------------------------------------------------------- readiness


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_ready_is_false_for_unknown_model_or_version(running: RunningServer, protocol: str) -> None:
    """is_model_ready answers False (no exception) for an unknown model or version."""
    client = _client(running, protocol)
    assert client.is_model_ready("fails") is True
    assert client.is_model_ready("fails", "1") is True
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("fails", "7") is False


def test_pipeline_is_not_ready_while_its_member_is_unloaded() -> None:
    """Unloading a model a pipeline calls makes the pipeline not ready (both protocols, the
    index says why) and its requests fail naming the missing step; loading it back restores it."""
    with serve_in_thread(REPO, metrics=False, model_control_mode="explicit", load_models=("*",)) as running:
        clients = {p: _client(running, p) for p in PROTOCOLS}
        for protocol, client in clients.items():
            assert client.is_model_ready("via_fails") is True
            result = client.infer("via_fails", [_int_input(protocol, "MODE", 0)])
            assert result.as_numpy("OUT").tolist() == [0]

        clients["http"].unload_model("fails")
        for protocol, client in clients.items():
            assert client.is_model_ready("via_fails") is False
            with pytest.raises(InferenceServerException) as info:
                client.infer("via_fails", [_int_input(protocol, "MODE", 0)])
            assert "via_fails" in info.value.message() and "fails" in info.value.message()
            assert info.value.status() in ("503", "StatusCode.UNAVAILABLE")
            with pytest.raises(InferenceServerException) as info:
                client.infer("via_fails", [_int_input(protocol, "MODE", 0)], model_version="1")
            assert "step 'fails' cannot run" in info.value.message()
            assert info.value.status() in ("503", "StatusCode.UNAVAILABLE")
        index = {e["name"]: e for e in clients["http"].get_model_repository_index()}
        assert index["via_fails"]["state"] == "UNAVAILABLE"
        assert "unknown model 'fails'" in index["via_fails"]["reason"]

        clients["grpc"].load_model("fails")
        for protocol, client in clients.items():
            assert client.is_model_ready("via_fails") is True
            result = client.infer("via_fails", [_int_input(protocol, "MODE", 0)])
            assert result.as_numpy("OUT").tolist() == [0]


# --------------------------------------------------------------------------------- sequences


def _seq_step(client: Any, protocol: str, seq_id: int, x: int, *, start: bool, end: bool) -> dict[str, Any]:
    module = httpclient if protocol == "http" else grpcclient
    tensor = module.InferInput("X", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[x]], np.int32))
    result = client.infer("seq_flags", [tensor], sequence_id=seq_id, sequence_start=start, sequence_end=end)
    return {
        "flags": int(result.as_numpy("FLAGS")[0, 0]),
        "controls": result.as_numpy("CONTROLS")[0].tolist(),
        "corrid": int(result.as_numpy("CORR")[0, 0]),
        "total": int(result.as_numpy("TOTAL")[0, 0]),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_that_starts_and_ends_a_sequence(running: RunningServer, protocol: str) -> None:
    """A one-request sequence has flags() == START | END == 3 and START, END and READY set."""
    got = _seq_step(_client(running, protocol), protocol, 4242, 5, start=True, end=True)
    assert got == {"flags": 3, "controls": [1, 1, 1], "corrid": 4242, "total": 5}


def test_sequences_interleaved_across_http_and_grpc(running: RunningServer) -> None:
    """Two sequences whose requests alternate between HTTP and gRPC connections each keep their
    own flags, controls, correlation id and running sum."""
    clients = {p: _client(running, p) for p in PROTOCOLS}
    seen: dict[int, list[dict[str, Any]]] = {101: [], 202: []}
    steps = [  # (sequence, protocol, x, start, end)
        (101, "http", 1, True, False), (202, "grpc", 10, True, False), (101, "grpc", 2, False, False),
        (202, "http", 20, False, False), (202, "grpc", 30, False, True), (101, "http", 3, False, True),
    ]
    for seq, protocol, x, start, end in steps:
        seen[seq].append(_seq_step(clients[protocol], protocol, seq, x, start=start, end=end))
    assert [s["flags"] for s in seen[101]] == [1, 0, 2]
    assert [s["controls"] for s in seen[101]] == [[1, 0, 1], [0, 0, 1], [0, 1, 1]]
    assert [s["total"] for s in seen[101]] == [1, 3, 6]
    assert [s["total"] for s in seen[202]] == [10, 30, 60]
    assert {s["corrid"] for s in seen[101]} == {101} and {s["corrid"] for s in seen[202]} == {202}


# -------------------------------------------------------------------------------- statistics


def _stats_fields(descriptor: Any, prefix: str = "") -> set[str]:
    """Every field path of a protobuf message type, e.g. 'inference_stats.compute_input.ns'."""
    fields = set()
    for field in descriptor.fields:
        path = prefix + field.name
        fields.add(path)
        if field.message_type is not None and not field.is_repeated:
            fields |= _stats_fields(field.message_type, path + ".")
    return fields


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_statistics_split_compute_input_infer_output(running: RunningServer, protocol: str) -> None:
    """After an inference of a Python model, compute_input, compute_infer and compute_output
    each have count and ns > 0 (overall and per batch size), and last_inference is set."""
    client = _client(running, protocol)
    client.infer("params", [_int_input(protocol, "X", 0)])
    if protocol == "http":
        (entry,) = client.get_inference_statistics("params")["model_stats"]
    else:
        (entry,) = client.get_inference_statistics("params", as_json=True)["model_stats"]
    stats = entry["inference_stats"]
    for key in ("compute_input", "compute_infer", "compute_output", "success", "queue"):
        assert int(stats[key]["count"]) > 0 and int(stats[key]["ns"]) > 0, (key, stats[key])
    (batch,) = entry["batch_stats"]
    for key in ("compute_input", "compute_infer", "compute_output"):
        assert int(batch[key]["count"]) > 0 and int(batch[key]["ns"]) > 0, (key, batch[key])
    assert int(entry["last_inference"]) > 1_600_000_000_000  # epoch milliseconds


def test_grpc_statistics_carry_every_field(running: RunningServer) -> None:
    """The gRPC ModelStatistics message sets every field that the HTTP JSON has, with the same
    values, and the JSON has every field of the message."""
    from google.protobuf import json_format

    from dagserve._proto import grpc_service_pb2 as pb

    grpc_client = _client(running, "grpc")
    grpc_client.infer("params", [_int_input("grpc", "X", 0)])
    http_json = _client(running, "http").get_inference_statistics("params")["model_stats"][0]
    message = grpc_client.get_inference_statistics("params").model_stats[0]
    http_msg = json_format.ParseDict(http_json, pb.ModelStatistics(), ignore_unknown_fields=True)
    # Counters move between the two calls only if another request ran; none did.
    assert json_format.MessageToDict(message) == json_format.MessageToDict(http_msg)
    expected = _stats_fields(pb.ModelStatistics.DESCRIPTOR)
    flat = set()

    def walk(value: Any, prefix: str) -> None:
        for key, item in value.items():
            flat.add(prefix + key)
            if isinstance(item, dict) and key != "response_stats":
                walk(item, prefix + key + ".")

    walk(http_json, "")
    assert expected <= flat, sorted(expected - flat)


# ----------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def metered() -> Iterator[RunningServer]:
    with serve_in_thread(REPO) as running:
        yield running


def _metric(running: RunningServer, name: str, **labels: str) -> float:
    text = httpx.get(f"http://{running.metrics_url}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}} in:\n{text}")


def test_failures_are_counted_by_reason_and_validation_is_not(metered: RunningServer) -> None:
    """A model failure counts as reason BACKEND (both protocols); requests refused by
    validation (wrong datatype, missing input, unknown input) count as no failure, as on
    Triton; every reason label is present."""
    for protocol in PROTOCOLS:
        with pytest.raises(InferenceServerException):
            _client(metered, protocol).infer("fails", [_int_input(protocol, "MODE", 1)])
    client = httpclient.InferenceServerClient(metered.http_url)
    wrong_type = httpclient.InferInput("MODE", [1], "FP32")
    wrong_type.set_data_from_numpy(np.array([1], np.float32))
    unknown = _int_input("http", "OTHER", 1)
    for inputs in ([wrong_type], [], [_int_input("http", "MODE", 1), unknown]):
        with pytest.raises(InferenceServerException) as info:
            client.infer("fails", inputs)
        assert info.value.status() == "400"
    labels = {"model": "fails", "version": "1"}
    assert _metric(metered, "nv_inference_request_failure", reason="BACKEND", **labels) == 2
    for reason in ("REJECTED", "CANCELED", "OTHER"):
        assert _metric(metered, "nv_inference_request_failure", reason=reason, **labels) == 0
    assert client.get_inference_statistics("fails")["model_stats"][0]["inference_stats"]["fail"]["count"] == 2


def test_pending_request_count_gauge(metered: RunningServer, tmp_path: Path) -> None:
    """nv_inference_pending_request_count shows requests waiting for the model's one instance
    while it is busy, and drops back to 0 when they are answered."""
    gate = tmp_path / "open"
    labels = {"model": "gate", "version": "1"}
    assert _metric(metered, "nv_inference_pending_request_count", **labels) == 0

    def call(i: int) -> int:
        client = httpclient.InferenceServerClient(metered.http_url)
        result = client.infer("gate", [_int_input("http", "X", i)], parameters={"gate": str(gate)})
        return int(result.as_numpy("OUT")[0])

    with ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(call, i) for i in range(3)]
        try:
            deadline = time.monotonic() + 60
            while _metric(metered, "nv_inference_pending_request_count", **labels) != 2:
                assert time.monotonic() < deadline, "two requests never showed as pending"
                time.sleep(0.02)
        finally:
            gate.touch()
        assert sorted(p.result(timeout=60) for p in pending) == [0, 1, 2]
    assert _metric(metered, "nv_inference_pending_request_count", **labels) == 0


# -------------------------------------------------------------------------- auto-complete


def _config(running: RunningServer, protocol: str, model: str) -> dict[str, Any]:
    client = _client(running, protocol)
    if protocol == "http":
        return client.get_model_config(model)  # type: ignore[no-any-return]
    return client.get_model_config(model, as_json=True)["config"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auto_complete_config_fills_the_config_and_metadata(running: RunningServer, protocol: str) -> None:
    """What auto_complete_config adds (inputs, outputs, max_batch_size, dynamic batching,
    transaction policy) is in the served config and metadata."""
    config = _config(running, protocol, "autocomplete")
    assert int(config["max_batch_size"]) == 8
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [2])
    ]
    assert [t["name"] for t in config["output"]] == ["OUTPUT0", "BATCH"]
    metadata = _client(running, protocol).get_model_metadata("autocomplete")
    inputs = metadata["inputs"] if protocol == "http" else [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.inputs
    ]
    assert inputs == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 2]}]
    stream_config = _config(running, protocol, "autocomplete_stream")
    assert stream_config["model_transaction_policy"]["decoupled"] is True


def test_auto_completed_model_batches(running: RunningServer) -> None:
    """The completed config is used: concurrent requests of the auto-completed batching model
    are batched by the dynamic batcher the hook asked for."""
    client = httpclient.InferenceServerClient(running.http_url, concurrency=8)
    pending = []
    for i in range(8):
        tensor = httpclient.InferInput("INPUT0", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[i, i + 0.5]], np.float32))
        pending.append(client.async_infer("autocomplete", [tensor]))
    results = [p.get_result() for p in pending]
    for i, result in enumerate(results):
        assert result.as_numpy("OUTPUT0").tolist() == [[2 * i, 2 * i + 1]]
    assert all(1 <= int(r.as_numpy("BATCH")[0, 0]) <= 8 for r in results)
    stats = client.get_inference_statistics("autocomplete")["model_stats"][0]
    assert int(stats["inference_count"]) >= 8


def test_auto_completed_decoupled_model_streams(running: RunningServer) -> None:
    """set_model_transaction_policy({'decoupled': True}) makes the model decoupled: gRPC
    streaming gets each of its responses."""
    import queue

    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(running.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("autocomplete_stream", [_int_input("grpc", "N", 3)])
        got = [results.get(timeout=60) for _ in range(3)]
    finally:
        client.stop_stream()
    assert [e for _, e in got] == [None] * 3
    assert [int(r.as_numpy("I")[0]) for r, _ in got] == [0, 1, 2]


BROKEN_HOOK = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.set_max_batch_size(2)
        return config

    def execute(self, requests):
        return []
"""


def test_failing_auto_complete_config_fails_the_model(tmp_path: Path) -> None:
    """A hook that raises (here Triton's own check: max_batch_size below the config's) fails
    the model's load with the hook's message, and the other models still serve."""
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 4\n')
    (tmp_path / "broken" / "1" / "model.py").write_text(BROKEN_HOOK)
    shutil.copytree(REPO / "params", tmp_path / "params")
    with serve_in_thread(tmp_path, metrics=False) as running:
        for protocol in PROTOCOLS:
            client = _client(running, protocol)
            assert client.is_model_ready("broken") is False
            assert client.is_model_ready("params") is True
        index = {e["name"]: e for e in httpclient.InferenceServerClient(running.http_url).get_model_repository_index()}
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "configuration specified max_batch_size 4, but in auto-complete-config function" in index["broken"]["reason"]


def test_disable_auto_complete_config_flag(tmp_path: Path) -> None:
    """`dagserve serve --disable-auto-complete-config` does not call the hook: the model's
    config is the one on disk (no inputs, max_batch_size 0)."""
    import os
    import re
    import signal
    import subprocess
    import sys

    repo = tmp_path / "repo"
    (repo / "autocomplete").mkdir(parents=True)
    for rel in ("config.pbtxt", "1/model.py"):
        target = repo / "autocomplete" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((REPO / "autocomplete" / rel).read_text())
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--http-port", "0",
         "--grpc-port", "-1", "--metrics-port", "-1", "--disable-auto-complete-config"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        address = ""
        for line in proc.stdout:
            match = re.search(r"HTTP service listening on (?:http://)?(\S+)", line)
            if match:
                address = match.group(1)
                break
        assert address, f"server exited (code {proc.poll()})"
        config = httpx.get(f"http://{address}/v2/models/autocomplete/config", timeout=30).json()
        assert config.get("input", []) == [] and config.get("max_batch_size", 0) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


# ---------------------------------------------------------------------------------- versions


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("model", "served"),
    [("versions_all", [1, 2, 3]), ("versions_latest2", [2, 3]), ("versions_specific", [1, 3])],
)
def test_version_policy_decides_the_served_versions(
    running: RunningServer, protocol: str, model: str, served: list[int]
) -> None:
    """version_policy all / latest N / specific serves exactly those versions: each answers as
    itself, the others are not ready and refuse requests, metadata lists exactly the served
    ones, and no version means the newest served."""
    client = _client(running, protocol)
    for version in (1, 2, 3):
        ready = client.is_model_ready(model, str(version))
        assert ready is (version in served)
        if version in served:
            result = client.infer(model, [_int_input(protocol, "X", 0)], model_version=str(version))
            assert int(result.as_numpy("VERSION")[0]) == version
        else:
            with pytest.raises(InferenceServerException, match=f"no version {version}"):
                client.infer(model, [_int_input(protocol, "X", 0)], model_version=str(version))
    metadata = client.get_model_metadata(model)
    versions = metadata["versions"] if protocol == "http" else list(metadata.versions)
    assert versions == [str(v) for v in served]
    newest = client.infer(model, [_int_input(protocol, "X", 0)])
    assert int(newest.as_numpy("VERSION")[0]) == max(served)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pipeline_step_pinned_to_a_version(running: RunningServer, protocol: str) -> None:
    """An ensemble step with model_version: 1 calls version 1; one with -1 the newest."""
    result = _client(running, protocol).infer("pinned", [_int_input(protocol, "X", 0)])
    assert int(result.as_numpy("V_PINNED")[0]) == 1
    assert int(result.as_numpy("V_LATEST")[0]) == 3


def test_request_cancelled_while_waiting_counts_as_canceled(metered: RunningServer, tmp_path: Path) -> None:
    """A gRPC request whose deadline passes while it waits for the busy model is cancelled and
    counted as reason CANCELED; the model goes on serving."""
    gate = tmp_path / "open"
    labels = {"model": "gate", "version": "1"}
    before = _metric(metered, "nv_inference_request_failure", reason="CANCELED", **labels)
    started = tmp_path / "started"
    http = httpclient.InferenceServerClient(metered.http_url)
    pool = ThreadPoolExecutor(1)
    busy = pool.submit(
        http.infer, "gate", [_int_input("http", "X", 7)], parameters={"gate": str(gate), "started": str(started)}
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.02)
        grpc_client = grpcclient.InferenceServerClient(metered.grpc_url)
        with pytest.raises(InferenceServerException, match="Deadline"):
            grpc_client.infer("gate", [_int_input("grpc", "X", 1)], client_timeout=0.5)
        while _metric(metered, "nv_inference_request_failure", reason="CANCELED", **labels) != before + 1:
            assert time.monotonic() < deadline, "the cancelled request was not counted"
            time.sleep(0.02)
    finally:
        gate.touch()
        pool.shutdown(wait=False)
    assert int(busy.result(timeout=60).as_numpy("OUT")[0]) == 7
