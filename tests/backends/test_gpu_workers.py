"""``--workers 2`` with a ``KIND_GPU`` torch model, placed ``one`` by default: only worker 0
loads it, the other worker forwards its requests, and the model's CUDA outputs come back by
CUDA IPC (``dagserve.forwarding``), not through the host.

Marked ``gpu``: skipped where CUDA is absent (conftest.py). Written on a machine without a GPU;
passed on an H200 (docs/gpu.md); ``bench/device_every_core.sh`` runs it on the device machine.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from .conftest import ModelWriter

pytestmark = pytest.mark.gpu

DEADLINE = 180.0

EMBED = b'''
import torch


def create_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4096))
'''

# 4096 outputs a row: a large CUDA tensor, which would go through the shared buffer if it
# were copied to the host first.
EMBED_CONFIG = """
backend: "pytorch"
max_batch_size: 32
input [{ name: "x" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4096] }]
instance_group [{ kind: KIND_GPU gpus: [0] count: 1 }]
"""

WHOAMI_CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "PID" data_type: TYPE_INT64 dims: [1] }]
"""

WHOAMI = b'''
import os

import numpy as np


class Model:
    def __init__(self, context):
        pass

    def infer(self, inputs):
        return {"PID": np.array([os.getpid()], dtype=np.int64)}
'''


def reference(x: np.ndarray) -> np.ndarray:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4096)).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


class Workers:
    """``dagserve serve --workers 2 --log-level debug`` on ephemeral ports."""

    def __init__(self, repo: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--http-port", "0",
             "--grpc-port", "0", "--metrics-port", "0", "--workers", "2", "--log-level", "debug"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.addresses: dict[str, str] = {}
        self.pids: list[int] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if match := re.search(r"worker processes \(pids (\d+), (\d+)\)", line):
                self.pids = [int(match.group(1)), int(match.group(2))]
            if match := re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)", line):
                self.addresses[match.group(1)] = match.group(2)
            if len(self.addresses) == 2 and self.pids:
                break
        else:
            raise AssertionError(f"server exited before listening:\n{''.join(self.lines)}")
        self._drain = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or ()), daemon=True)
        self._drain.start()

    def close(self) -> str:
        """Stop the server (if it still runs) and return all it printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(DEADLINE)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "".join(self.lines)


@pytest.fixture
def workers(repo: Path, add_model: ModelWriter) -> Iterator[Workers]:
    add_model("embed", EMBED_CONFIG, {"1/model.py": EMBED})
    add_model("whoami", WHOAMI_CONFIG, {"1/model.py": WHOAMI})
    served = Workers(repo)
    try:
        yield served
    finally:
        served.close()


def http_infer(connection: http.client.HTTPConnection, model: str, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    connection.request("POST", f"/v2/models/{model}/infer", json.dumps(body), {"Content-Type": "application/json"})
    reply = connection.getresponse()
    answer = json.loads(reply.read())
    assert reply.status == 200, answer
    output = answer["outputs"][0]
    return np.array(output["data"]).reshape(output["shape"])


def test_a_gpu_model_answers_through_the_worker_that_forwards(workers: Workers) -> None:
    """Requests over HTTP and gRPC on connections that reached worker 1 are answered by the
    model on the GPU in worker 0, exactly as on the CPU; no CUDA output fell back to a host
    copy."""
    import grpc

    from dagserve._proto import grpc_service_pb2 as pb
    from dagserve._proto import grpc_service_pb2_grpc as pb_grpc

    owner = workers.pids[0]
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    expected = reference(x)
    one = np.ones(1, np.float32)

    host, port = workers.addresses["HTTP"].rsplit(":", 1)
    for _ in range(200):  # fresh connections until one reaches worker 1
        connection = http.client.HTTPConnection(host, int(port), timeout=DEADLINE)
        if int(http_infer(connection, "whoami", "X", one)[0]) != owner:
            break
        connection.close()
    else:
        raise AssertionError("no HTTP connection reached worker 1")
    try:
        for _ in range(5):
            np.testing.assert_allclose(http_infer(connection, "embed", "x", x), expected, rtol=1e-4, atol=1e-5)
        assert int(http_infer(connection, "whoami", "X", one)[0]) != owner  # still worker 1's connection
    finally:
        connection.close()

    def grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, name: str, array: np.ndarray) -> bytes:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
        return bytes(stub.ModelInfer(request, timeout=DEADLINE).raw_output_contents[0])

    for _ in range(200):
        channel = grpc.insecure_channel(workers.addresses["gRPC"])  # a connection of its own
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        if int(np.frombuffer(grpc_infer(stub, "whoami", "X", one), np.int64)[0]) != owner:
            break
        channel.close()
    else:
        raise AssertionError("no gRPC connection reached worker 1")
    with channel:
        for _ in range(5):
            y = np.frombuffer(grpc_infer(stub, "embed", "x", x), np.float32).reshape(expected.shape)
            np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)

    output = workers.close()
    assert "cannot be shared by IPC" not in output, output[-5000:]
