"""BLS calls of different requests are not serialised by the server: each instance of a BLS
model (sync ``.exec()`` or ``async def execute`` with ``async_exec``) is in its callee at the
same time as the others; a decoupled ``async def execute`` model takes its next request while
one waits, on one instance, as on Triton; and bench/repos/triton_bls answers as the ensemble
it mirrors."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve.testing import RunningServer, serve_in_thread

DEADLINE_S = 60.0
BENCH_BLS = Path(__file__).resolve().parents[2] / "bench" / "repos" / "triton_bls"

GATE = '''
import os
import anyio

FOLDER = {folder!r}


async def infer(inputs):
    token = int(inputs["T"].reshape(-1)[0])
    open(os.path.join(FOLDER, f"started_{{token}}"), "w").close()
    while not os.path.exists(os.path.join(FOLDER, f"release_{{token}}")):
        await anyio.sleep(0.005)
    return {{"Y": inputs["T"] * 10}}
'''

SYNC_CALLER = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            reply = pb_utils.InferenceRequest(
                model_name="gate", requested_output_names=["Y"],
                inputs=[pb_utils.get_input_tensor_by_name(request, "T")]).exec()
            responses.append(pb_utils.InferenceResponse(reply.output_tensors(), error=reply.error()))
        return responses
'''

ASYNC_CALLER = SYNC_CALLER.replace("def execute", "async def execute").replace(").exec()", ").async_exec()").replace(
    "reply = pb_utils", "reply = await pb_utils"
)

# Decoupled, one instance: Triton (since 24.04) runs each execute coroutine in the background,
# so the instance takes the next request while this one waits.
DECOUPLED_GATE = '''
import asyncio
import os

import triton_python_backend_utils as pb_utils

FOLDER = {folder!r}


class TritonPythonModel:
    async def execute(self, requests):
        for request in requests:
            t = pb_utils.get_input_tensor_by_name(request, "T").as_numpy()
            token = int(t.reshape(-1)[0])
            open(os.path.join(FOLDER, f"started_{{token}}"), "w").close()
            while not os.path.exists(os.path.join(FOLDER, f"release_{{token}}")):
                await asyncio.sleep(0.005)
            request.get_response_sender().send(
                pb_utils.InferenceResponse([pb_utils.Tensor("Y", t * 10)]),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

STREAM_CALLER = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            replies = await pb_utils.InferenceRequest(
                model_name="decoupled_gate", requested_output_names=["Y"],
                inputs=[pb_utils.get_input_tensor_by_name(request, "T")]).async_exec(decoupled=True)
            tensors = [t for reply in replies for t in reply.output_tensors()]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
'''

CALLERS = ("sync_caller", "async_caller", "stream_caller")
INSTANCES = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path_factory.mktemp("repo")
    folder = tmp_path_factory.mktemp("signals")
    io = "inputs: [{name: T, datatype: INT32, shape: [1]}]\n"
    models = (
        ("gate", GATE.format(folder=str(folder)), INSTANCES, False),
        ("decoupled_gate", DECOUPLED_GATE.format(folder=str(folder)), 1, True),
        ("sync_caller", SYNC_CALLER, INSTANCES, False),
        ("async_caller", ASYNC_CALLER, INSTANCES, False),
        ("stream_caller", STREAM_CALLER, INSTANCES, False),
    )
    for name, code, count, decoupled in models:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.yaml").write_text(
            f"backend: python\ninstance_group: [{{count: {count}}}]\n" + io
            + "outputs: [{name: Y, datatype: INT32, shape: [1]}]\n"
            + ("model_transaction_policy: {decoupled: true}\n" if decoupled else "")
        )
    with serve_in_thread(repo, grpc=False, metrics=False) as running:
        yield running, folder


def _wait_for(path: Path, calls: list[concurrent.futures.Future[httpclient.InferResult]]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        for call in calls:
            if call.done():
                call.result()
        assert time.monotonic() < deadline, f"{path.name} never appeared: the BLS calls were serialised"
        time.sleep(0.005)


@pytest.mark.parametrize("caller", CALLERS)
def test_bls_calls_of_concurrent_requests_reach_the_callee_together(
    served: tuple[RunningServer, Path], caller: str
) -> None:
    """One request per instance of the calling model: all their BLS calls are inside the
    callee at once (none is released before every one started), and each gets its answer;
    the decoupled callee has one instance, the others one per caller instance."""
    running, folder = served
    base = 100 * (CALLERS.index(caller) + 1)
    tokens = [base + i for i in range(INSTANCES)]

    def infer(token: int) -> httpclient.InferResult:
        with httpclient.InferenceServerClient(running.http_url, network_timeout=DEADLINE_S) as client:
            tensor = httpclient.InferInput("T", [1], "INT32")
            tensor.set_data_from_numpy(np.array([token], np.int32))
            return client.infer(caller, [tensor])

    with concurrent.futures.ThreadPoolExecutor(INSTANCES) as pool:
        calls = [pool.submit(infer, token) for token in tokens]
        for token in tokens:
            _wait_for(folder / f"started_{token}", calls)
        for token in tokens:
            (folder / f"release_{token}").touch()
        results = [call.result(timeout=DEADLINE_S) for call in calls]
    assert [int(r.as_numpy("Y")[0]) for r in results] == [10 * t for t in tokens]


def _expected(raw: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """The classify chain computed here: nibble histogram -> W -> softmax -> top class."""
    features = np.stack([np.bincount(row % 16, minlength=16) for row in raw]).astype(np.float32) / raw.shape[1]
    logits = features.reshape(len(raw), 4, 4).sum(axis=1)  # W maps bin i to class i % 4
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    k = np.argmax(p, axis=1)
    return [[b"cat", b"dog", b"bird", b"fish"][i] for i in k], p[np.arange(len(k)), k]


@pytest.mark.parametrize("model", ["classify_bls", "classify_bls_async"])
def test_bench_bls_repository_answers_as_the_chain(model: str) -> None:
    """bench/repos/triton_bls: both BLS forms return the label and score the three steps
    compute, for every row of a batch."""
    raw = np.random.default_rng(7).integers(0, 256, size=(3, 32), dtype=np.uint8)
    labels, scores = _expected(raw)
    with serve_in_thread(BENCH_BLS, grpc=False, metrics=False) as running, \
            httpclient.InferenceServerClient(running.http_url) as client:
        tensor = httpclient.InferInput("RAW", list(raw.shape), "UINT8")
        tensor.set_data_from_numpy(raw)
        result = client.infer(model, [tensor])
    assert result.as_numpy("LABEL").reshape(-1).tolist() == labels
    np.testing.assert_allclose(result.as_numpy("SCORE").reshape(-1), scores, rtol=1e-6)
