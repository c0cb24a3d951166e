"""pb_utils BLS with ``await request.async_exec()``: an ``async def execute`` runs several BLS
calls concurrently (asyncio.gather), gets their outputs, and sees a callee's failure as an
error response, not an exception."""

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

CALLER = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils


def bls(model, t):
    return pb_utils.InferenceRequest(model_name=model, requested_output_names=["Y"],
                                     inputs=[pb_utils.Tensor("T", t)])


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            t = pb_utils.get_input_tensor_by_name(request, "T").as_numpy()
            replies = await asyncio.gather(*(bls("gate", t[i:i + 1]).async_exec() for i in range(len(t))))
            total = sum(int(pb_utils.get_output_tensor_by_name(r, "Y").as_numpy()[0]) for r in replies)
            missing = await bls("no_such_model", t[:1]).async_exec()
            message = missing.error().message() if missing.has_error() else "no error"
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", np.array([total], np.int32)),
                pb_utils.Tensor("ERROR", np.array([message.encode()], dtype=np.object_))]))
        return responses
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path_factory.mktemp("repo")
    folder = tmp_path_factory.mktemp("signals")
    io = "inputs: [{name: T, datatype: INT32, shape: [-1]}]\n"
    (repo / "gate" / "1").mkdir(parents=True)
    (repo / "gate" / "1" / "model.py").write_text(GATE.format(folder=str(folder)))
    (repo / "gate" / "config.yaml").write_text(
        "backend: python\ninstance_group: [{count: 3}]\n" + io + "outputs: [{name: Y, datatype: INT32, shape: [-1]}]\n"
    )
    (repo / "caller" / "1").mkdir(parents=True)
    (repo / "caller" / "1" / "model.py").write_text(CALLER)
    (repo / "caller" / "config.yaml").write_text(
        "backend: python\n" + io
        + "outputs: [{name: SUM, datatype: INT32, shape: [1]}, {name: ERROR, datatype: BYTES, shape: [1]}]\n"
    )
    with serve_in_thread(repo, grpc=False, metrics=False) as running:
        yield running, folder


def _wait_for(path: Path, call: concurrent.futures.Future[httpclient.InferResult]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        if call.done():
            call.result()
        assert time.monotonic() < deadline, f"{path.name} never appeared: the BLS calls did not run concurrently"
        time.sleep(0.005)


def test_async_exec_calls_run_concurrently_and_report_errors(served: tuple[RunningServer, Path]) -> None:
    """Three BLS calls are all in the callee at once (none is released before all started);
    their outputs add up, and a call to a missing model returns an error naming it."""
    running, folder = served
    tokens = [1, 2, 3]

    def infer() -> httpclient.InferResult:
        with httpclient.InferenceServerClient(running.http_url) as client:
            tensor = httpclient.InferInput("T", [3], "INT32")
            tensor.set_data_from_numpy(np.array(tokens, np.int32))
            return client.infer("caller", [tensor])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(infer)
        for token in tokens:
            _wait_for(folder / f"started_{token}", call)
        for token in tokens:
            (folder / f"release_{token}").touch()
        result = call.result(timeout=DEADLINE_S)
    assert result.as_numpy("SUM")[0] == 10 * sum(tokens)
    error = result.as_numpy("ERROR")[0].decode()
    assert "no_such_model" in error
