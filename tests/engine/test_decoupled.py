"""Decoupled models: 0..N responses per request, from pb_utils senders and native generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dagserve import InferRequest, InferResponse, ModelExecutionError, Server, UnsupportedError

pytestmark = pytest.mark.anyio

TRITON_REPEAT = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            # Triton's pattern: answer from another thread after execute has returned.
            threading.Thread(target=self._answer, args=(sender, n)).start()
        return None

    def _answer(self, sender, n):
        if n < 0:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("N must be >= 0")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        for i in range(n):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

NATIVE_COUNTDOWN = '''
import numpy as np


async def infer(inputs):
    n = int(inputs["N"][0])
    for i in range(n, 0, -1):
        if i == 2 and n == 7:
            raise ValueError("seven is unlucky")
        yield {"OUT": np.array([i], np.int32)}
'''

CONFIG = """
backend: python
model_transaction_policy: {decoupled: true}
inputs: [{name: N, datatype: INT32, shape: [1]}]
outputs: [{name: OUT, datatype: INT32, shape: [1]}]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name, code in (("repeat", TRITON_REPEAT), ("countdown", NATIVE_COUNTDOWN)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(code)
        (tmp_path / name / "config.yaml").write_text(CONFIG)
    return tmp_path


async def collect(server: Server, model: str, n: int) -> list[InferResponse]:
    responses: list[InferResponse] = []

    async def emit(response: InferResponse) -> None:
        responses.append(response)

    await server.infer_stream(model, "", InferRequest(inputs={"N": np.array([n], np.int32)}), emit)
    return responses


@pytest.mark.parametrize(("model", "expected"), [("repeat", [0, 1, 2, 3]), ("countdown", [4, 3, 2, 1])])
async def test_every_response_then_final(repo: Path, model: str, expected: list[int]) -> None:
    async with Server(model_repository=repo) as server:
        responses = await collect(server, model, 4)
    assert [int(r.outputs["OUT"][0]) for r in responses[:-1]] == expected
    assert [r.final for r in responses] == [False] * 4 + [True]
    assert responses[-1].outputs == {}


async def test_zero_responses(repo: Path) -> None:
    async with Server(model_repository=repo) as server:
        responses = await collect(server, "repeat", 0)
    assert len(responses) == 1 and responses[0].final and responses[0].outputs == {}


async def test_error_after_some_responses(repo: Path) -> None:
    async with Server(model_repository=repo) as server:
        got: list[InferResponse] = []

        async def emit(response: InferResponse) -> None:
            got.append(response)

        with pytest.raises(ModelExecutionError, match="countdown"):
            await server.infer_stream("countdown", "", InferRequest(inputs={"N": np.array([7], np.int32)}), emit)
        assert [int(r.outputs["OUT"][0]) for r in got] == [7, 6, 5, 4, 3]
        with pytest.raises(ModelExecutionError, match="N must be >= 0"):
            await collect(server, "repeat", -1)
        assert len(await collect(server, "repeat", 2)) == 3


async def test_unary_infer_is_refused(repo: Path) -> None:
    async with Server(model_repository=repo) as server:
        with pytest.raises(UnsupportedError, match="ModelStreamInfer"):
            await server.infer("repeat", "", InferRequest(inputs={"N": np.array([1], np.int32)}))


async def test_ordinary_model_streams_one_final_response(triton_repo: Path) -> None:
    async with Server(model_repository=triton_repo) as server:
        got: list[InferResponse] = []

        async def emit(response: InferResponse) -> None:
            got.append(response)

        request = InferRequest(inputs={"INPUT0": np.ones(4, np.float32), "INPUT1": np.ones(4, np.float32)})
        await server.infer_stream("add_sub", "", request, emit)
    assert len(got) == 1 and got[0].final


LINGERING = '''
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils

GATE = os.environ["DAGSERVE_TEST_LINGER_GATE"]


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        # Still inside execute after the final response: hold until the test lets go.
        open(os.path.join(GATE, "started"), "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(GATE, "release")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return None
'''


async def test_a_model_that_returns_after_its_final_response_counts_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model may send its final response from ``execute`` and return a moment later (under
    load, after the client has every response): the request counts as a success, not as
    CANCELED (it was cancelled once the final response was out)."""
    from dagserve.testing import FileGate, wait_until_async

    gate = FileGate(tmp_path / "gate")
    monkeypatch.setenv("DAGSERVE_TEST_LINGER_GATE", str(gate.path))
    (tmp_path / "repo" / "linger" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "linger" / "1" / "model.py").write_text(LINGERING)
    (tmp_path / "repo" / "linger" / "config.yaml").write_text(CONFIG)
    async with Server(model_repository=tmp_path / "repo") as server:
        responses: list[InferResponse] = []

        async def emit(response: InferResponse) -> None:
            responses.append(response)
            if response.final:
                await gate.wait_started_async()
                gate.release()

        await server.infer_stream("linger", "", InferRequest(inputs={"N": np.array([1], np.int32)}), emit)
        assert [r.final for r in responses] == [True]

        def counted() -> dict[str, int]:
            stats = server.statistics("linger")["model_stats"][0]
            return {"success": stats["inference_stats"]["success"]["count"],
                    "fail": stats["inference_stats"]["fail"]["count"]}

        await wait_until_async(lambda: counted()["success"] + counted()["fail"] >= 1, what="the request counted")
        assert counted() == {"success": 1, "fail": 0}
