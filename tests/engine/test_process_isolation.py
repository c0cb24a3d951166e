"""execution: process runs a Python model in its own worker process."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import InferRequest, InvalidInputError, Server, WorkerCrashedError

pytestmark = pytest.mark.anyio

MODEL = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x[0] == 13:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("13 is bad", pb_utils.TritonError.INVALID_ARG)))
            elif x[0] == 99:
                os._exit(3)
            else:
                out.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("PID", np.array([os.getpid()], np.int64))]))
        return out
'''


def make_repo(tmp_path: Path) -> Path:
    (tmp_path / "iso" / "1").mkdir(parents=True)
    (tmp_path / "iso" / "1" / "model.py").write_text(MODEL)
    (tmp_path / "iso" / "config.yaml").write_text(
        "backend: python\nparameters: {execution: process}\n"
        "inputs: [{name: X, datatype: INT32, shape: [1]}]\n"
        "outputs: [{name: Y, datatype: INT32, shape: [1]}, {name: PID, datatype: INT64, shape: [1]}]\n"
    )
    return tmp_path


def call(x: int) -> InferRequest:
    return InferRequest(inputs={"X": np.array([x], np.int32)})


async def test_runs_in_another_process_and_survives_a_crash(tmp_path: Path) -> None:
    async with Server(model_repository=make_repo(tmp_path)) as server:
        first = await server.infer("iso", "", call(4))
        assert first.outputs["Y"][0] == 8
        pid = int(first.outputs["PID"][0])
        assert pid != os.getpid()
        with pytest.raises(InvalidInputError, match="13 is bad"):
            await server.infer("iso", "", call(13))
        with pytest.raises(WorkerCrashedError, match="exited with code 3"):
            await server.infer("iso", "", call(99))
        with anyio.fail_after(60):  # the new worker starts in the background
            while True:
                try:
                    again = await server.infer("iso", "", call(5))
                    break
                except WorkerCrashedError:
                    await anyio.sleep(0.05)
        assert again.outputs["Y"][0] == 10 and int(again.outputs["PID"][0]) != pid
