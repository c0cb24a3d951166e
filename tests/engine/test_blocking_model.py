"""A sync model that blocks, in the default execution mode, holds only its own requests: health,
readiness, metrics and other models keep answering over HTTP while it is stuck."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve.testing import serve_in_thread

GATE = "_dagserve_test_blocking_gate"

BLOCKER = f'''
import numpy as np
import {GATE} as gate


def infer(inputs):
    gate.entered.set()
    if not gate.release.wait(120):  # a bound, so a failed test cannot leave the thread stuck
        raise RuntimeError("never released")
    return {{"Y": inputs["X"] + 1}}
'''

TRITON_BLOCKER = f'''
import {GATE} as gate
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        gate.entered.set()
        gate.release.wait(120)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1)]) for r in requests]
'''

OTHER = '''
def infer(inputs):
    return {"Y": inputs["X"] * 2}
'''

CONFIG = (
    "backend: python\n"
    "inputs: [{name: X, datatype: INT32, shape: [1]}]\n"
    "outputs: [{name: Y, datatype: INT32, shape: [1]}]\n"
)


@pytest.fixture
def gate() -> Iterator[types.ModuleType]:
    module = types.ModuleType(GATE)
    module.entered = threading.Event()  # type: ignore[attr-defined]
    module.release = threading.Event()  # type: ignore[attr-defined]
    sys.modules[GATE] = module
    try:
        yield module
    finally:
        module.release.set()  # type: ignore[attr-defined]
        del sys.modules[GATE]


def make_repo(root: Path, blocker_source: str) -> Path:
    for name, source in (("blocker", blocker_source), ("other", OTHER)):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(source)
        (root / name / "config.yaml").write_text(CONFIG)
    return root


def infer(url: str, model: str, value: int) -> int:
    client = httpclient.InferenceServerClient(url, network_timeout=120)
    x = httpclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.array([value], np.int32))
    return int(client.infer(model, [x]).as_numpy("Y")[0])


@pytest.mark.parametrize("source", [BLOCKER, TRITON_BLOCKER], ids=["native", "triton"])
def test_blocked_model_holds_only_its_own_requests(tmp_path: Path, gate: types.ModuleType, source: str) -> None:
    """While one model's execute is blocked: ready, live, metadata, metrics and another model answer."""
    with serve_in_thread(make_repo(tmp_path, source), grpc=False) as running, ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(infer, running.http_url, "blocker", 41)
        assert gate.entered.wait(60), "the blocking model was never called"
        base = f"http://{running.http_url}"
        with httpx.Client(timeout=30) as http:
            assert http.get(f"{base}/v2/health/ready").status_code == 200
            assert http.get(f"{base}/v2/health/live").status_code == 200
            assert http.get(f"{base}/v2/models/blocker/ready").status_code == 200
            metrics = http.get(f"http://{running.metrics_url}/metrics")
            assert metrics.status_code == 200 and "nv_inference_request_success" in metrics.text
        assert infer(running.http_url, "other", 21) == 42
        assert not stuck.done()  # still blocked: everything above was answered around it
        gate.release.set()
        assert stuck.result(timeout=60) == 42
