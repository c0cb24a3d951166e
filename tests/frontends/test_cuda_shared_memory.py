"""Triton's CUDA shared-memory extension through the real tritonclient, HTTP and gRPC.

Two kinds of test:

* ``test_real_*`` (marked ``gpu``): the real thing, on a machine with a CUDA GPU, CuPy and
  cuda-bindings (what ``tritonclient.utils.cuda_shared_memory`` needs): the client allocates
  device memory and exports cudaIPC handles with ``tritonclient.utils.cuda_shared_memory``,
  unchanged, and a ``dagserve serve`` subprocess (CUDA refuses to open a handle in the process
  that exported it) reads the inputs from the GPU and writes the outputs to it. They skip here
  (no GPU); they ran on the GPU machine (docs/gpu.md).
* ``test_stand_in_*``: the same wire protocol and registry over a **stand-in for the GPU**:
  ``dagserve.cuda_ipc.open_memory`` is replaced by a fake whose "device memory" is a host
  bytearray, because this machine has no GPU. They prove what the server does around the copies
  (registration, status, bounds, inputs, outputs, errors, both protocols), not that CUDA
  copies work: the real tests do that.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve import cuda_ipc
from dagserve.errors import InvalidInputError
from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "triton_python"  # add_sub: FP32 [4] + [4] -> sum, difference
PROTOCOLS = ("http", "grpc")


def client(address: str, protocol: str) -> Any:
    return httpclient.InferenceServerClient(address) if protocol == "http" else grpcclient.InferenceServerClient(address)


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def without_data(result: Any, protocol: str) -> set[str]:
    """The outputs a response names without their data (written to shared memory)."""
    response = result.get_response()
    if protocol == "http":
        return {o["name"] for o in response["outputs"] if "data" not in o and "parameters" not in o}
    return {o.name for o, raw in zip(response.outputs, response.raw_output_contents, strict=True) if raw == b""}


def add_sub(protocol: str, inputs: tuple[str, str], outputs: tuple[str, str], *, out_offset: int = 0) -> tuple[Any, Any]:
    """add_sub's inputs, 16 bytes each from the regions ``inputs``, and its outputs into the
    regions ``outputs`` (at ``out_offset``)."""
    m = httpclient if protocol == "http" else grpcclient
    ins, outs = [], []
    for name, region in zip(("INPUT0", "INPUT1"), inputs, strict=True):
        tensor = m.InferInput(name, [4], "FP32")
        tensor.set_shared_memory(region, 16)
        ins.append(tensor)
    for name, region in zip(("OUTPUT0", "OUTPUT1"), outputs, strict=True):
        out = m.InferRequestedOutput(name)
        out.set_shared_memory(region, 16, offset=out_offset)
        outs.append(out)
    return ins, outs


# -- a stand-in for the GPU ---------------------------------------------------------------------
class FakeDeviceMemory:
    """Stand-in for an opened cudaIPC allocation (this machine has no GPU): host bytes."""

    def __init__(self, size: int, device_id: int) -> None:
        self.bytes = bytearray(size)
        self.size = size
        self.device_id = device_id
        self.closed = False

    def read(self, offset: int, size: int) -> memoryview:
        assert offset + size <= self.size, "the registry let an access past the allocation through"
        return memoryview(bytes(self.bytes[offset:offset + size]))  # a copy, as from a GPU

    def write(self, offset: int, data: memoryview) -> None:
        assert offset + data.nbytes <= self.size, "the registry let an access past the allocation through"
        self.bytes[offset:offset + data.nbytes] = data

    def close(self) -> None:
        self.closed = True


class FakeGpu:
    """Allocations by handle, as cudaIpcGetMemHandle would give them out."""

    def __init__(self) -> None:
        self.allocations: dict[bytes, FakeDeviceMemory] = {}

    def allocate(self, size: int) -> tuple[bytes, FakeDeviceMemory]:
        handle = os.urandom(cuda_ipc.CUDA_IPC_HANDLE_SIZE)
        self.allocations[handle] = FakeDeviceMemory(size, 0)
        return base64.b64encode(handle), self.allocations[handle]

    def open(self, handle: bytes, device_id: int) -> FakeDeviceMemory:
        if handle not in self.allocations:
            raise InvalidInputError("failed to open CUDA IPC handle: invalid argument")
        return self.allocations[handle]


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    fake = FakeGpu()
    monkeypatch.setattr(cuda_ipc, "open_memory", fake.open)
    return fake


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False, model_control_mode="explicit", load_models=("add_sub",),
                         allow_client_shm=True) as server:
        yield server


def cuda_status(c: Any, name: str = "") -> dict[str, dict[str, int]]:
    answer = c.get_cuda_shared_memory_status(name)
    if isinstance(answer, list):
        return {r["name"]: {k: int(v) for k, v in r.items() if k != "name"} for r in answer}
    return {n: {"device_id": int(r.device_id), "byte_size": int(r.byte_size)} for n, r in answer.regions.items()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stand_in_inputs_from_and_outputs_to_cuda_regions(running: RunningServer, gpu: FakeGpu, protocol: str) -> None:
    """Register, status, infer with inputs read from one CUDA region and outputs written to
    another (nothing in the response but their names, types and shapes), unregister — over a
    stand-in for the GPU (see the module docstring)."""
    address = running.http_url if protocol == "http" else running.grpc_url
    c = client(address, protocol)
    in_handle, in_memory = gpu.allocate(32)
    out_handle, out_memory = gpu.allocate(64)
    raw_in, raw_out = (in_handle.decode(), out_handle.decode()) if protocol == "http" else (in_handle, out_handle)
    x, y = np.array([1, 2, 3, 4], np.float32), np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    in_memory.bytes[:32] = x.tobytes() + y.tobytes()
    try:
        c.register_cuda_shared_memory("in", raw_in, 0, 32)
        c.register_cuda_shared_memory("out", raw_out, 0, 48)
        assert cuda_status(c) == {"in": {"device_id": 0, "byte_size": 32}, "out": {"device_id": 0, "byte_size": 48}}
        assert cuda_status(c, "out") == {"out": {"device_id": 0, "byte_size": 48}}
        m = httpclient if protocol == "http" else grpcclient
        first, second = m.InferInput("INPUT0", [4], "FP32"), m.InferInput("INPUT1", [4], "FP32")
        first.set_shared_memory("in", 16)
        second.set_shared_memory("in", 16, offset=16)
        outs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
        outs[0].set_shared_memory("out", 16, offset=8)
        outs[1].set_shared_memory("out", 16, offset=32)
        result = c.infer("add_sub", [first, second], outputs=outs)
        assert without_data(result, protocol) == {"OUTPUT0", "OUTPUT1"}  # only in the region
        np.testing.assert_array_equal(np.frombuffer(bytes(out_memory.bytes[8:24]), np.float32), x + y)
        np.testing.assert_array_equal(np.frombuffer(bytes(out_memory.bytes[32:48]), np.float32), x - y)
        assert out_memory.bytes[:8] == bytes(8) and out_memory.bytes[48:] == bytes(16)  # nothing else written
    finally:
        c.unregister_cuda_shared_memory()
    assert cuda_status(c) == {}
    ins, outs = add_sub(protocol, ("in", "in"), ("out", "out"))
    code, message = error_of(lambda: c.infer("add_sub", ins, outputs=outs))
    assert code in ("404", "StatusCode.NOT_FOUND") and message == "Unable to find shared memory region: 'in'"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stand_in_cuda_mistakes_get_clear_errors(running: RunningServer, gpu: FakeGpu, protocol: str) -> None:
    """A region larger than its allocation, a handle that opens nothing, a name taken, a window
    past the region's end and an output window too small are each refused with Triton's code
    and message; a good request follows — over a stand-in for the GPU."""
    address = running.http_url if protocol == "http" else running.grpc_url
    c = client(address, protocol)
    invalid = "400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    handle, memory = gpu.allocate(32)
    raw = handle.decode() if protocol == "http" else handle
    unknown = base64.b64encode(bytes(64))
    try:
        code, message = error_of(lambda: c.register_cuda_shared_memory("big", raw, 0, 33))
        assert code == invalid
        assert message == ("failed to register shared memory region 'big': invalid args (byte_size 33 > the 32 "
                           "bytes of the CUDA allocation)")
        code, message = error_of(lambda: c.register_cuda_shared_memory(
            "lost", unknown.decode() if protocol == "http" else unknown, 0, 16))
        assert code == invalid
        assert message == "failed to register shared memory region 'lost': failed to open CUDA IPC handle: invalid argument"
        c.register_cuda_shared_memory("r", raw, 0, 32)
        code, message = error_of(lambda: c.register_cuda_shared_memory("r", raw, 0, 32))
        assert code in ("400", "StatusCode.ALREADY_EXISTS") and message == "shared memory region 'r' already in manager"
        m = httpclient if protocol == "http" else grpcclient
        late = m.InferInput("INPUT0", [4], "FP32")
        late.set_shared_memory("r", 16, offset=24)
        other = m.InferInput("INPUT1", [4], "FP32")
        other.set_data_from_numpy(np.zeros(4, np.float32))
        code, message = error_of(lambda: c.infer("add_sub", [late, other]))
        assert code == invalid and message.startswith("Invalid offset + byte size for shared memory region: 'r'")
        ins, outs = add_sub(protocol, ("r", "r"), ("r", "r"), out_offset=24)
        code, message = error_of(lambda: c.infer("add_sub", ins, outputs=outs))
        assert code == invalid and message.startswith("Invalid offset + byte size for shared memory region: 'r'")
        small = m.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory("r", 8)
        code, message = error_of(lambda: c.infer("add_sub", add_sub(protocol, ("r", "r"), ("r", "r"))[0], outputs=[small]))
        assert code in (invalid, "500", "StatusCode.INTERNAL")
        assert message.startswith("shared memory size specified with the request for output 'OUTPUT0' (8 bytes)")
        memory.bytes[:16] = np.full(4, 2, np.float32).tobytes()
        good = m.InferRequestedOutput("OUTPUT0")
        good.set_shared_memory("r", 16, offset=16)
        c.infer("add_sub", add_sub(protocol, ("r", "r"), ("r", "r"))[0], outputs=[good])
        np.testing.assert_array_equal(np.frombuffer(bytes(memory.bytes[16:32]), np.float32), np.full(4, 4, np.float32))
    finally:
        c.unregister_cuda_shared_memory()


# -- the real thing, on a GPU -------------------------------------------------------------------
def _real_cuda_ready() -> str:
    """Why the real tests cannot run here ("" when they can)."""
    for module in ("cupy", "cuda.bindings"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"needs {module}"
        except ModuleNotFoundError:
            return f"needs {module}"
    try:
        import cupy  # type: ignore[import-not-found,import-untyped,unused-ignore]

        if not cupy.cuda.runtime.getDeviceCount():
            return "needs a CUDA GPU"
    except Exception as exc:  # noqa: BLE001 - no driver
        return f"needs a CUDA GPU ({exc})"
    return ""


@pytest.fixture(scope="module")
def gpu_server() -> Iterator[dict[str, str]]:
    """``dagserve serve`` in a subprocess (the client process exports the handles)."""
    why = _real_cuda_ready()
    if why:
        pytest.skip(f"{why} (run on the GPU machine: docs/gpu.md)")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "-1", "--allow-client-shm", "true", "--model-control-mode",
         "explicit", "--load-model", "add_sub"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    found: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
        if len(found) == 2:
            break
    try:
        assert len(found) == 2, f"the server exited before reporting its ports (code {proc.poll()})"
        yield {"http": found["HTTP"], "grpc": found["gRPC"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


@pytest.mark.gpu
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_cuda_shared_memory_round_trip(gpu_server: dict[str, str], protocol: str) -> None:
    """tritonclient.utils.cuda_shared_memory, unchanged: inputs in one GPU region, each output
    in its own; the server reads and writes them through cudaIPC; status lists the regions;
    a region registered larger than its allocation is refused (the driver's address range)."""
    import tritonclient.utils.cuda_shared_memory as cudashm

    c = client(gpu_server[protocol], protocol)
    x, y = np.arange(4, dtype=np.float32), np.full(4, 0.25, np.float32)
    ins = cudashm.create_shared_memory_region("in", 32, 0)
    sums = cudashm.create_shared_memory_region("sums", 16, 0)
    diffs = cudashm.create_shared_memory_region("diffs", 16, 0)
    big = cudashm.create_shared_memory_region("big", 1 << 20, 0)
    try:
        cudashm.set_shared_memory_region(ins, [x, y])
        c.register_cuda_shared_memory("in", cudashm.get_raw_handle(ins), 0, 32)
        c.register_cuda_shared_memory("sums", cudashm.get_raw_handle(sums), 0, 16)
        c.register_cuda_shared_memory("diffs", cudashm.get_raw_handle(diffs), 0, 16)
        assert set(cuda_status(c)) == {"in", "sums", "diffs"}
        m = httpclient if protocol == "http" else grpcclient
        first, second = m.InferInput("INPUT0", [4], "FP32"), m.InferInput("INPUT1", [4], "FP32")
        first.set_shared_memory("in", 16)
        second.set_shared_memory("in", 16, offset=16)
        outs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
        outs[0].set_shared_memory("sums", 16)
        outs[1].set_shared_memory("diffs", 16)
        for _ in range(3):
            result = c.infer("add_sub", [first, second], outputs=outs)
        assert without_data(result, protocol) == {"OUTPUT0", "OUTPUT1"}
        np.testing.assert_array_equal(cudashm.get_contents_as_numpy(sums, np.float32, [4]), x + y)
        np.testing.assert_array_equal(cudashm.get_contents_as_numpy(diffs, np.float32, [4]), x - y)
        code, message = error_of(lambda: c.register_cuda_shared_memory("big", cudashm.get_raw_handle(big), 0, 3 << 20))
        assert code in ("400", "StatusCode.INVALID_ARGUMENT")
        assert message.startswith("failed to register shared memory region 'big': invalid args")
    finally:
        c.unregister_cuda_shared_memory()
        for handle in (ins, sums, diffs, big):
            cudashm.destroy_shared_memory_region(handle)
    assert cuda_status(c) == {}
