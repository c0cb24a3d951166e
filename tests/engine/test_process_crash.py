"""A process-isolated model whose worker dies: its requests fail UNAVAILABLE naming the model and
the cause, the worker restarts in the background, and other models never notice."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

CRASHY = '''
import ctypes
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x[0] == 11:
                ctypes.string_at(0)  # segmentation fault
            if x[0] == 99:
                os._exit(3)
            if x[0] == 7:
                time.sleep(3600)  # hangs
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("PID", np.array([os.getpid()], np.int64))]))
        return out
'''

STEADY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1)])
                for r in requests]
'''

DEADLINE_S = 60.0
HANG_TIMEOUT_S = 5


def _model(repo: Path, name: str, source: str, execution: str, outputs: str, parameters: str = "") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(source)
    (repo / name / "config.yaml").write_text(
        f"backend: python\nparameters: {{execution: {execution}{parameters}}}\n"
        "inputs: [{name: X, datatype: INT32, shape: [1]}]\n"
        f"outputs: [{outputs}]\n"
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    _model(repo, "crashy", CRASHY, "process",
           "{name: Y, datatype: INT32, shape: [1]}, {name: PID, datatype: INT64, shape: [1]}")
    _model(repo, "steady", STEADY, "thread", "{name: Y, datatype: INT32, shape: [1]}")
    _model(repo, "hangy", CRASHY, "process",
           "{name: Y, datatype: INT32, shape: [1]}, {name: PID, datatype: INT64, shape: [1]}",
           f", process_timeout_seconds: {HANG_TIMEOUT_S}")
    with serve_in_thread(repo, metrics=False) as server:
        yield server


def _inputs(x: int) -> list[httpclient.InferInput]:
    tensor = httpclient.InferInput("X", [1], "INT32")
    tensor.set_data_from_numpy(np.array([x], np.int32))
    return [tensor]


def _pid(client: httpclient.InferenceServerClient, x: int = 4, model: str = "crashy") -> int:
    result = client.infer(model, _inputs(x))
    assert result.as_numpy("Y")[0] == 2 * x
    return int(result.as_numpy("PID")[0])


def _answers_after_restart(client: httpclient.InferenceServerClient, old_pid: int, model: str = "crashy") -> int:
    """Poll until the model answers again (from a new worker); each failure meanwhile must be
    the clean UNAVAILABLE error. Returns the new worker's pid."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            pid = _pid(client, model=model)
        except InferenceServerException as exc:
            assert exc.status() == "503" and f"model '{model}' is unavailable" in exc.message(), exc
            assert time.monotonic() < deadline, f"{model} did not come back within {DEADLINE_S} s: {exc}"
            time.sleep(0.05)
            continue
        assert pid != old_pid
        return pid


class _Steady:
    """Calls the other model over gRPC in a loop until stopped; keeps every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self._stop.is_set():
                tensor = grpcclient.InferInput("X", [1], "INT32")
                tensor.set_data_from_numpy(np.array([self.calls], np.int32))
                try:
                    result = client.infer("steady", [tensor])
                    assert result.as_numpy("Y")[0] == self.calls + 1
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    self.failures.append(exc)
                self.calls += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize(
    ("x", "cause"),
    [(99, "exited with code 3"), (11, "was killed by signal SIGSEGV")],
    ids=["os._exit", "segfault"],
)
def test_crash_fails_the_request_unavailable_then_restarts(running: RunningServer, x: int, cause: str) -> None:
    """The crashing request fails 503 naming the model and the exit cause, a later request is
    answered by a new worker, and another model answers throughout."""
    with httpclient.InferenceServerClient(running.http_url) as client, _Steady(running.grpc_url) as steady:
        pid = _pid(client)
        with pytest.raises(InferenceServerException) as info:
            client.infer("crashy", _inputs(x))
        assert info.value.status() == "503"
        assert "model 'crashy' is unavailable" in info.value.message()
        assert cause in info.value.message()
        _answers_after_restart(client, pid)
        assert client.is_model_ready("crashy")
        deadline = time.monotonic() + DEADLINE_S
        calls = steady.calls
        while steady.calls < calls + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert steady.calls > 5
    assert steady.failures == []


def test_crash_over_grpc_is_unavailable(running: RunningServer) -> None:
    """Over gRPC the crashed request fails with UNAVAILABLE and the same message."""
    with httpclient.InferenceServerClient(running.http_url) as http, grpcclient.InferenceServerClient(running.grpc_url) as client:
        pid = _pid(http)
        tensor = grpcclient.InferInput("X", [1], "INT32")
        tensor.set_data_from_numpy(np.array([99], np.int32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("crashy", [tensor])
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "model 'crashy' is unavailable" in info.value.message()
        assert "exited with code 3" in info.value.message()
        _answers_after_restart(http, pid)


def test_killed_idle_worker_is_replaced(running: RunningServer) -> None:
    """A worker killed by SIGKILL while idle is replaced, and the model answers from the new one."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        pid = _pid(client)
        os.kill(pid, signal.SIGKILL)
        new_pid = _answers_after_restart(client, pid)
        assert new_pid != pid


def test_failures_are_counted_per_model(running: RunningServer) -> None:
    """The crashed request is a failure in crashy's statistics, not in steady's."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        def failures(model: str) -> int:
            stats = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
            return int(stats["fail"]["count"])

        pid = _pid(client)
        before_crashy, before_steady = failures("crashy"), failures("steady")
        with pytest.raises(InferenceServerException):
            client.infer("crashy", _inputs(99))
        assert failures("crashy") == before_crashy + 1
        assert failures("steady") == before_steady
        _answers_after_restart(client, pid)


def test_hung_worker_is_killed_after_process_timeout_seconds(running: RunningServer) -> None:
    """With process_timeout_seconds, a request that hangs its worker fails 503 saying so, the
    worker is killed and replaced, and the model answers again."""
    with httpclient.InferenceServerClient(running.http_url, network_timeout=DEADLINE_S) as client:
        pid = _pid(client, model="hangy")
        with pytest.raises(InferenceServerException) as info:
            client.infer("hangy", _inputs(7))
        assert info.value.status() == "503"
        assert f"model 'hangy' is unavailable: its worker process did not answer within {HANG_TIMEOUT_S} s " \
               "and was killed" in info.value.message()
        _answers_after_restart(client, pid, model="hangy")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the hung worker is gone


def test_a_bad_process_timeout_fails_the_load(tmp_path: Path) -> None:
    """process_timeout_seconds that is not a number >= 0 fails the model's load, naming the parameter."""
    _model(tmp_path, "badtimeout", STEADY, "process", "{name: Y, datatype: INT32, shape: [1]}",
           ", process_timeout_seconds: soon")
    with serve_in_thread(tmp_path, grpc=False, metrics=False) as server, \
            httpclient.InferenceServerClient(server.http_url) as client:
        entry = next(m for m in client.get_model_repository_index() if m["name"] == "badtimeout")
    assert entry["state"] == "UNAVAILABLE"
    assert "process_timeout_seconds must be a number of seconds >= 0, not 'soon'" in entry["reason"]


DUO = '''
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils

FOLDER = {folder!r}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if x[0] == 99:
                os._exit(3)
            if x[0] == 50:  # hold this worker until the test releases it
                open(os.path.join(FOLDER, "held"), "w").close()
                while not os.path.exists(os.path.join(FOLDER, "release")):
                    time.sleep(0.005)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x * 2), pb_utils.Tensor("PID", np.array([os.getpid()], np.int64))]))
        return out
'''


def test_a_crash_leaves_a_sibling_instance_and_its_request_alone(tmp_path: Path) -> None:
    """With two process instances, one held mid-request while the other crashes: the crash fails
    only its own request, and the held request then completes from its untouched worker."""
    repo, folder = tmp_path / "repo", tmp_path / "signals"
    folder.mkdir()
    _model(repo, "duo", DUO.format(folder=str(folder)), "process",
           "{name: Y, datatype: INT32, shape: [1]}, {name: PID, datatype: INT64, shape: [1]}")
    config = repo / "duo" / "config.yaml"
    config.write_text(config.read_text() + "instance_group: [{count: 2}]\n")
    with serve_in_thread(repo, grpc=False, metrics=False) as server, \
            httpclient.InferenceServerClient(server.http_url) as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        def hold() -> np.ndarray:
            with httpclient.InferenceServerClient(server.http_url) as own:
                return own.infer("duo", _inputs(50)).as_numpy("Y")

        held = pool.submit(hold)
        deadline = time.monotonic() + DEADLINE_S
        while not (folder / "held").exists():
            assert not held.done(), held.result()
            assert time.monotonic() < deadline, "the held request never started"
            time.sleep(0.005)
        with pytest.raises(InferenceServerException) as info:
            client.infer("duo", _inputs(99))  # the only free instance takes it, and dies
        assert info.value.status() == "503" and "exited with code 3" in info.value.message()
        (folder / "release").touch()
        assert held.result(timeout=DEADLINE_S)[0] == 100
