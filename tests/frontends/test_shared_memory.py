"""Triton's system shared-memory extension through the real tritonclient (HTTP and gRPC) and
tritonclient.utils.shared_memory, unchanged: inputs read from regions, outputs written to them,
a pipeline through shared memory, every bounds and registration error answered with Triton's
code and message and followed by a good request, a region unregistered while a request uses it,
the CUDA endpoints, the default of client shared memory off, and the restricted category."""

from __future__ import annotations

import base64
import concurrent.futures
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from dagserve.engine import Server
from dagserve.frontends.restricted import GRPC_HEADER_PREFIX, Restrictions
from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "pipelines"
EXAMPLES = Path(__file__).parents[2] / "examples"
PROTOCOLS = ("http", "grpc")
GATE_TIMEOUT = 60.0


class Gate:
    """Holds the ``held`` model's calls until released (thread events, no sleeps)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


GATE = Gate()


def _add_sub(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"OUTPUT0": inputs["INPUT0"] + inputs["INPUT1"], "OUTPUT1": inputs["INPUT0"] - inputs["INPUT1"]}


def _upper(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"UPPER": np.array([bytes(v).upper() for v in inputs["TEXT"].reshape(-1)], dtype=object)}


def _held(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    GATE.entered.set()
    assert GATE.release.wait(GATE_TIMEOUT), "the test never released the held call"
    return {"Y": inputs["X"] * 2}


async def _setup(server: Server) -> None:
    int4 = {"datatype": "INT32", "shape": [4]}
    await server.add_model("add_sub", _add_sub, {
        "inputs": [{"name": "INPUT0", **int4}, {"name": "INPUT1", **int4}],
        "outputs": [{"name": "OUTPUT0", **int4}, {"name": "OUTPUT1", **int4}],
    })
    await server.add_model("upper", _upper, {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "UPPER", "datatype": "BYTES", "shape": [-1]}],
    })
    await server.add_model("held", _held, {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [4]}],
    })


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(
        REPO, metrics=False, model_control_mode="explicit", load_models=("classify_yaml",),
        setup=_setup, allow_client_shm=True,
    ) as server:
        yield server


class Regions:
    """Client-side regions (tritonclient.utils.shared_memory) with keys unique to this test
    run, destroyed at the end (and unregistered from the server)."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.prefix = f"/dagserve_test_{uuid.uuid4().hex[:12]}"

    def create(self, name: str, byte_size: int) -> tuple[Any, str]:
        key = f"{self.prefix}_{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        return handle, key

    def destroy(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(running: RunningServer) -> Iterator[Regions]:
    made = Regions()
    try:
        yield made
    finally:
        httpclient.InferenceServerClient(running.http_url).unregister_system_shared_memory()
        made.destroy()


def client(running: RunningServer, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(running.http_url)
    return grpcclient.InferenceServerClient(running.grpc_url)


def module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def status(c: Any, name: str = "") -> dict[str, dict[str, Any]]:
    """Region status by name, the same shape whichever client asked."""
    answer = c.get_system_shared_memory_status(name)
    if isinstance(answer, list):
        return {r["name"]: {k: int(v) if k != "key" else v for k, v in r.items() if k != "name"} for r in answer}
    return {n: {"key": r.key, "offset": r.offset, "byte_size": r.byte_size} for n, r in answer.regions.items()}


def described_without_data(result: Any, protocol: str) -> dict[str, tuple[str, list[int]]]:
    """The outputs a response describes without data (name -> datatype, shape): an HTTP output
    with neither ``data`` nor ``parameters``, a gRPC output whose raw contents are empty."""
    if protocol == "http":
        outputs = result.get_response()["outputs"]
        return {o["name"]: (o["datatype"], o["shape"]) for o in outputs if set(o) == {"name", "datatype", "shape"}}
    response = result.get_response()
    return {
        o.name: (o.datatype, list(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True) if raw == b""
    }


def infer(c: Any, protocol: str, ins: list[Any], outs: list[Any]) -> Any:
    inputs, outputs = add_sub_request(protocol, ins, outs)
    return c.infer("add_sub", inputs, outputs=outputs)


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def add_sub_request(protocol: str, inputs: list[tuple[str, int, int] | None], outputs: list[tuple[str, int, int] | None]) -> tuple[list[Any], list[Any]]:
    """add_sub's two inputs and two outputs; a ``(region, byte_size, offset)`` puts that tensor
    in shared memory, ``None`` sends it in the request (inputs [0,1,2,3] and [1,1,1,1])."""
    m = module(protocol)
    values = [np.arange(4, dtype=np.int32), np.ones(4, dtype=np.int32)]
    ins = []
    for name, spec, value in zip(("INPUT0", "INPUT1"), inputs, values, strict=True):
        tensor = m.InferInput(name, [4], "INT32")
        if spec is None:
            tensor.set_data_from_numpy(value)
        else:
            tensor.set_shared_memory(spec[0], spec[1], offset=spec[2])
        ins.append(tensor)
    outs = []
    for name, spec in zip(("OUTPUT0", "OUTPUT1"), outputs, strict=True):
        out = m.InferRequestedOutput(name)
        if spec is not None:
            out.set_shared_memory(spec[0], spec[1], offset=spec[2])
        outs.append(out)
    return ins, outs


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_and_outputs_through_system_shared_memory(
    running: RunningServer, regions: Regions, protocol: str
) -> None:
    """Triton's simple shm example, unchanged: both inputs read from one region, both outputs
    written to another; the response describes the outputs without data, as Triton answers."""
    c = client(running, protocol)
    in_handle, in_key = regions.create("input_data", 32)
    out_handle, out_key = regions.create("output_data", 32)
    shm.set_shared_memory_region(in_handle, [np.arange(4, dtype=np.int32), np.ones(4, dtype=np.int32)])
    c.register_system_shared_memory("input_data", in_key, 32)
    c.register_system_shared_memory("output_data", out_key, 32)
    assert status(c) == {
        "input_data": {"key": in_key, "offset": 0, "byte_size": 32},
        "output_data": {"key": out_key, "offset": 0, "byte_size": 32},
    }
    ins, outs = add_sub_request(protocol, [("input_data", 16, 0), ("input_data", 16, 16)],
                                [("output_data", 16, 0), ("output_data", 16, 16)])
    result = c.infer("add_sub", ins, outputs=outs)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [4]), [1, 2, 3, 4])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [4], offset=16), [-1, 0, 1, 2])
    # No data in the response (tritonclient's as_numpy has nothing to read, as with Triton).
    assert described_without_data(result, protocol) == {"OUTPUT0": ("INT32", [4]), "OUTPUT1": ("INT32", [4])}

    # One output in shared memory, the other in the response; an input sent in the request.
    shm.set_shared_memory_region(out_handle, [np.zeros(8, dtype=np.int32)])
    ins, outs = add_sub_request(protocol, [None, ("input_data", 16, 16)], [None, ("output_data", 16, 16)])
    result = c.infer("add_sub", ins, outputs=outs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [1, 2, 3, 4])
    assert described_without_data(result, protocol) == {"OUTPUT1": ("INT32", [4])}
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [8]), [0] * 4 + [-1, 0, 1, 2])

    c.unregister_system_shared_memory("input_data")
    assert list(status(c)) == ["output_data"]
    c.unregister_system_shared_memory()
    assert status(c) == {}


def test_a_region_registered_over_http_serves_grpc(running: RunningServer, regions: Regions) -> None:
    """One registry behind both protocols, as in Triton; BYTES tensors in and out."""
    http, grpc = client(running, "http"), client(running, "grpc")
    text = np.array([b"hello", b"shared", b"memory"], dtype=object)
    serialized = serialize_byte_tensor(text)
    size = serialized_byte_size(serialized)
    in_handle, in_key = regions.create("text", size)
    out_handle, out_key = regions.create("upper", 64)
    shm.set_shared_memory_region(in_handle, [serialized])
    http.register_system_shared_memory("text", in_key, size)
    http.register_system_shared_memory("upper", out_key, 64)
    assert set(status(grpc)) == {"text", "upper"}
    tensor = grpcclient.InferInput("TEXT", [3], "BYTES")
    tensor.set_shared_memory("text", size)
    out = grpcclient.InferRequestedOutput("UPPER")
    out.set_shared_memory("upper", 64)
    result = grpc.infer("upper", [tensor], outputs=[out])
    got = shm.get_contents_as_numpy(out_handle, np.object_, result.get_output("UPPER").shape)
    assert list(got) == [b"HELLO", b"SHARED", b"MEMORY"]
    grpc.unregister_system_shared_memory()
    assert status(http) == {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_pipeline_through_shared_memory(running: RunningServer, regions: Regions, protocol: str) -> None:
    """A pipeline's input comes from a region and its outputs (BYTES and FP32) go to one; the
    answer is the one the same request gets without shared memory."""
    c, m = client(running, protocol), module(protocol)
    raw = np.arange(40, dtype=np.uint8)
    plain = m.InferInput("RAW", [40], "UINT8")
    plain.set_data_from_numpy(raw)
    expected = c.infer("classify_yaml", [plain])
    in_handle, in_key = regions.create("raw", 40)
    out_handle, out_key = regions.create("answer", 128)
    shm.set_shared_memory_region(in_handle, [raw])
    c.register_system_shared_memory("raw", in_key, 40)
    c.register_system_shared_memory("answer", out_key, 128)
    tensor = m.InferInput("RAW", [40], "UINT8")
    tensor.set_shared_memory("raw", 40)
    label, score = m.InferRequestedOutput("LABEL"), m.InferRequestedOutput("SCORE")
    label.set_shared_memory("answer", 64)
    score.set_shared_memory("answer", 4, offset=64)
    result = c.infer("classify_yaml", [tensor], outputs=[label, score])
    assert described_without_data(result, protocol) == {"LABEL": ("BYTES", [1]), "SCORE": ("FP32", [1])}
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_handle, np.object_, [1]), expected.as_numpy("LABEL")
    )
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_handle, np.float32, [1], offset=64), expected.as_numpy("SCORE")
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_regions_and_windows_then_a_good_request(running: RunningServer, regions: Regions, protocol: str) -> None:
    """Every mistake gets Triton's code and message (dagserve answers an output region that is
    too small, and a key that does not exist, with 400 where Triton says 500), and the server
    answers the next good request."""
    c = client(running, protocol)
    http = protocol == "http"
    invalid, not_found = ("400", "404") if http else ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND")
    in_handle, in_key = regions.create("in", 32)
    out_handle, out_key = regions.create("out", 32)
    shm.set_shared_memory_region(in_handle, [np.arange(4, dtype=np.int32), np.ones(4, dtype=np.int32)])

    # Registration.
    code, message = error_of(lambda: c.register_system_shared_memory("in", in_key, 64))
    assert (code, message) == (invalid, (f"failed to register shared memory region 'in': invalid args "
                                        f"(offset 0 + byte_size 64 > the 32 bytes of '{in_key}')"))
    code, message = error_of(lambda: c.register_system_shared_memory("in", in_key, 16, offset=24))
    assert code == invalid and message.startswith("failed to register shared memory region 'in': invalid args")
    code, message = error_of(lambda: c.register_system_shared_memory("gone", regions.prefix + "_missing", 8))
    assert (code, message) == (invalid, (f"Unable to open shared memory region: '{regions.prefix}_missing' "
                                        "(No such file or directory)"))
    for key in ("../etc/passwd", "/dev/shm/../../etc/passwd", "a/b", "/", "..", ""):
        code, message = error_of(lambda k=key: c.register_system_shared_memory("evil", k, 8))
        assert code == invalid and message.startswith(f"cannot register shared memory region 'evil' - invalid shm key '{key}'")
    c.register_system_shared_memory("in", in_key, 32)
    c.register_system_shared_memory("out", out_key, 32)
    code, message = error_of(lambda: c.register_system_shared_memory("in", out_key, 32))
    assert (code, message) == ("400" if http else "StatusCode.ALREADY_EXISTS", "shared memory region 'in' already in manager")
    code, message = error_of(lambda: c.get_system_shared_memory_status("nope"))
    assert (code, message) == (not_found, "Unable to find system shared memory region: 'nope'")

    # Inference.
    good_in = [("in", 16, 0), ("in", 16, 16)]
    good_out = [("out", 16, 0), ("out", 16, 16)]
    cases = [
        ([("nope", 16, 0), good_in[1]], good_out, not_found, "Unable to find shared memory region: 'nope'"),
        (good_in, [("nope", 16, 0), good_out[1]], not_found, "Unable to find shared memory region: 'nope'"),
        ([good_in[0], ("in", 16, 24)], good_out, invalid,
         "Invalid offset + byte size for shared memory region: 'in' (offset 24 + byte size 16 > the region's 32 bytes)"),
        ([good_in[0], ("in", 16, 32)], good_out, invalid,
         "Invalid offset for shared memory region: 'in' (offset 32, the region holds 32 bytes)"),
        (good_in, [good_out[0], ("out", 16, 20)], invalid,
         "Invalid offset + byte size for shared memory region: 'out' (offset 20 + byte size 16 > the region's 32 bytes)"),
        ([("in", 8, 0), good_in[1]], good_out, invalid, "input 'INPUT0': shape [4] of INT32 needs 16 bytes, got 8"),
        ([("in", 20, 0), good_in[1]], good_out, invalid, "input 'INPUT0': shape [4] of INT32 needs 16 bytes, got 20"),
        (good_in, [("out", 8, 0), good_out[1]], invalid,
         ("shared memory size specified with the request for output 'OUTPUT0' (8 bytes) should be at least "
         "16 bytes to hold the results")),
    ]
    for ins, outs, want_code, want_message in cases:
        code, message = error_of(lambda i=ins, o=outs: infer(c, protocol, i, o))
        assert (code, message) == (want_code, want_message), (ins, outs)

    ins, outs = add_sub_request(protocol, good_in, good_out)
    c.infer("add_sub", ins, outputs=outs)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [8]), [1, 2, 3, 4, -1, 0, 1, 2])


def test_malformed_parameters_are_400(running: RunningServer, regions: Regions) -> None:
    """Wire-level mistakes a client library would not make: a region without its byte size, an
    offset without a region, a negative size, data and a region at once, binary data and a
    region on an output."""
    import httpx

    handle, key = regions.create("in", 16)
    shm.set_shared_memory_region(handle, [np.arange(4, dtype=np.int32)])
    c = client(running, "http")
    c.register_system_shared_memory("in", key, 16)
    tensor = {"name": "INPUT0", "datatype": "INT32", "shape": [4]}
    other = {"name": "INPUT1", "datatype": "INT32", "shape": [4], "data": [1, 1, 1, 1]}
    cases = [
        ({"shared_memory_region": "in"}, None,
         "input 'INPUT0': 'shared_memory_region' needs 'shared_memory_byte_size' too (the size of the tensor's data)"),
        ({"shared_memory_offset": 0}, None,
         "'shared_memory_offset' can not be specified without 'shared_memory_region' parameter for input 'INPUT0'"),
        ({"shared_memory_region": "in", "shared_memory_byte_size": -16}, None,
         "invalid value for 'shared_memory_byte_size' parameter for input 'INPUT0': expected a non-negative integer"),
        ({"shared_memory_region": 7, "shared_memory_byte_size": 16}, None,
         "invalid value type for 'shared_memory_region' parameter for input 'INPUT0', expected a string"),
        ({"shared_memory_region": "in", "shared_memory_byte_size": 16}, [0, 1, 2, 3],
         ("input 'INPUT0': Input must set only one of the following fields: 'data', 'binary_data_size' in "
         "'parameters', 'shared_memory_region' in 'parameters'. But set 'data' 'shared_memory_region'")),
    ]
    for params, data, message in cases:
        entry = {**tensor, "parameters": params, **({"data": data} if data is not None else {})}
        reply = httpx.post(f"http://{running.http_url}/v2/models/add_sub/infer", json={"inputs": [entry, other]})
        assert (reply.status_code, reply.json()) == (400, {"error": message})
    good = {**tensor, "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16}}
    reply = httpx.post(f"http://{running.http_url}/v2/models/add_sub/infer", json={
        "inputs": [good, other],
        "outputs": [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16,
                                                      "binary_data": True}}],
    })
    assert (reply.status_code, reply.json()) == (400, {"error": "Output can't set both 'shared_memory_region' and 'binary_data'"})
    reply = httpx.post(f"http://{running.http_url}/v2/models/add_sub/infer", json={"inputs": [good, other]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [1, 2, 3, 4]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unregistering_a_region_in_use(running: RunningServer, regions: Regions, protocol: str) -> None:
    """A region unregistered (all regions, from the other protocol) while a request that reads
    and writes it is executing: the request completes and its output lands in the region; the
    next request that names the region is refused with 404 / NOT_FOUND; the server serves on."""
    c, m = client(running, protocol), module(protocol)
    in_handle, in_key = regions.create("held_in", 16)
    out_handle, out_key = regions.create("held_out", 16)
    shm.set_shared_memory_region(in_handle, [np.arange(4, dtype=np.float32)])
    c.register_system_shared_memory("held_in", in_key, 16)
    c.register_system_shared_memory("held_out", out_key, 16)

    def request() -> Any:
        own = client(running, protocol)  # the HTTP client may not change threads
        x = m.InferInput("X", [4], "FP32")
        x.set_shared_memory("held_in", 16)
        y = m.InferRequestedOutput("Y")
        y.set_shared_memory("held_out", 16)
        return own.infer("held", [x], outputs=[y])

    GATE.entered.clear()
    GATE.release.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(request)
        try:
            assert GATE.entered.wait(GATE_TIMEOUT), "the held model was never called"
            client(running, "grpc" if protocol == "http" else "http").unregister_system_shared_memory()
            assert status(c) == {}
        finally:
            GATE.release.set()
        result = future.result(timeout=GATE_TIMEOUT)
    assert described_without_data(result, protocol) == {"Y": ("FP32", [4])}
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [4]), [0, 2, 4, 6])
    code, message = error_of(request)
    assert code in ("404", "StatusCode.NOT_FOUND") and message == "Unable to find shared memory region: 'held_in'"
    assert c.is_server_live()


def _cuda_usable() -> bool:
    try:
        import cupy  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return bool(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no GPU
        return False


@pytest.mark.skipif(_cuda_usable(), reason="CUDA works here: tests/frontends/test_cuda_shared_memory.py covers it")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cuda_shared_memory_is_unsupported_here(running: RunningServer, protocol: str) -> None:
    """Without CuPy or a GPU the CUDA endpoints answer: status lists nothing, unregister is a
    no-op, register is refused UNSUPPORTED (501 / UNIMPLEMENTED) saying what is missing, after
    the handle check Triton makes first."""
    c = client(running, protocol)
    unsupported = "501" if protocol == "http" else "StatusCode.UNIMPLEMENTED"
    invalid = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    handle = base64.b64encode(bytes(64))
    raw_handle = handle.decode() if protocol == "http" else handle
    assert list(c.get_cuda_shared_memory_status() if protocol == "http" else c.get_cuda_shared_memory_status().regions) == []
    c.unregister_cuda_shared_memory()
    c.unregister_cuda_shared_memory("anything")
    code, message = error_of(lambda: c.register_cuda_shared_memory("gpu", raw_handle, 0, 64))
    assert code == unsupported
    assert message.startswith("failed to register CUDA shared memory region: 'gpu', CUDA shared memory needs ")
    assert "pip install cupy" in message or "a CUDA GPU" in message
    short = base64.b64encode(bytes(8))
    code, message = error_of(lambda: c.register_cuda_shared_memory("gpu", short.decode() if protocol == "http" else short, 0, 64))
    assert (code, message) == (invalid, "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
    code, message = error_of(lambda: c.get_cuda_shared_memory_status("gpu"))
    assert message == "Unable to find cuda shared memory region: 'gpu'"


def test_client_shared_memory_is_off_by_default(regions: Regions) -> None:
    """Without --allow-client-shm (Triton's default since 2.69): register, unregister and any
    request naming a region answer UNSUPPORTED with Triton's message; status lists nothing; the
    server still reports both extensions, as Triton does."""
    disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
    _handle, key = regions.create("off", 16)
    with serve_in_thread(metrics=False, setup=_setup) as running:
        for protocol in PROTOCOLS:
            c = client(running, protocol)
            unsupported = "501" if protocol == "http" else "StatusCode.UNIMPLEMENTED"
            assert error_of(lambda c=c: c.register_system_shared_memory("off", key, 16)) == (unsupported, disabled)
            assert error_of(lambda c=c: c.unregister_system_shared_memory()) == (unsupported, disabled)
            ins, outs = add_sub_request(protocol, [("off", 16, 0), None], [None, None])
            assert error_of(lambda c=c, i=ins, o=outs: c.infer("add_sub", i, outputs=o)) == (unsupported, disabled)
            ins, outs = add_sub_request(protocol, [None, None], [("off", 16, 0), None])
            assert error_of(lambda c=c, i=ins, o=outs: c.infer("add_sub", i, outputs=o)) == (unsupported, disabled)
            assert status(c) == {}
        extensions = httpclient.InferenceServerClient(running.http_url).get_server_metadata()["extensions"]
        assert {"system_shared_memory", "cuda_shared_memory"} <= set(extensions)


def test_shared_memory_apis_can_be_restricted(regions: Regions) -> None:
    """The shared-memory endpoints are Triton's ``shared-memory`` category: refused without the
    header (403 / PERMISSION_DENIED), served with it; inference stays open."""
    rule = ["shared-memory:shm-key=s3cret"]
    handle, key = regions.create("guarded", 16)
    shm.set_shared_memory_region(handle, [np.arange(4, dtype=np.int32)])
    with serve_in_thread(
        metrics=False, setup=_setup, allow_client_shm=True, http_restricted=Restrictions.parse(rule),
        grpc_restricted=Restrictions.parse(rule, header_prefix=GRPC_HEADER_PREFIX),
    ) as running:
        for protocol, headers, refusal in (
            ("http", {"shm-key": "s3cret"}, ("403", "This API is restricted, expecting header 'shm-key'")),
            ("grpc", {"triton-grpc-protocol-shm-key": "s3cret"},
             ("StatusCode.PERMISSION_DENIED", "This protocol is restricted, expecting header 'triton-grpc-protocol-shm-key'")),
        ):
            c = client(running, protocol)
            for call in (
                lambda c=c: c.register_system_shared_memory("guarded", key, 16),
                lambda c=c: c.get_system_shared_memory_status(),
                lambda c=c: c.unregister_system_shared_memory(),
                lambda c=c: c.get_cuda_shared_memory_status(),
            ):
                assert error_of(call) == refusal
            c.register_system_shared_memory("guarded", key, 16, headers=headers)
            assert list(status_with(c, headers)) == ["guarded"]
            ins, outs = add_sub_request(protocol, [("guarded", 16, 0), None], [None, None])
            np.testing.assert_array_equal(c.infer("add_sub", ins, outputs=outs).as_numpy("OUTPUT0"), [1, 2, 3, 4])
            c.unregister_system_shared_memory(headers=headers)


def status_with(c: Any, headers: dict[str, str]) -> list[str]:
    answer = c.get_system_shared_memory_status(headers=headers)
    return [r["name"] for r in answer] if isinstance(answer, list) else list(answer.regions)


def test_the_documented_example_runs() -> None:
    """examples/shared_memory_client.py (docs/shared-memory.md) answers over both protocols."""
    with serve_in_thread(
        EXAMPLES / "pipelines", metrics=False, model_control_mode="explicit", load_models=("iris",),
        allow_client_shm=True,
    ) as running:
        script = str(EXAMPLES / "shared_memory_client.py")
        for extra in ([], ["--grpc", running.grpc_url]):
            done = subprocess.run(
                [sys.executable, script, "--http", running.http_url, *extra],
                capture_output=True, text=True, timeout=120, check=False,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines() == [
                "[5.1 3.5 1.4 0.2] setosa 0.985", "[6.2 2.9 4.3 1.3] versicolor 0.915",
            ]
