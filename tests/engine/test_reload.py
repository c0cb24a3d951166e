"""Model control in explicit mode: zero-loss reload, one load at a time per model, pipelines
loading (and unloading) the models they call, and loads with ``config`` / ``file:`` overrides,
through the stock tritonclient over HTTP and gRPC."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

EXAMPLES = Path(__file__).parent.parent.parent / "examples"

MODEL_PY = '''
import uuid
import numpy as np
import triton_python_backend_utils as pb_utils

COUNTER = {counter!r}
FACTOR = {factor}


class TritonPythonModel:
    def initialize(self, args):
        with open(COUNTER, "a") as f:
            f.write("+\\n")
        self.generation = uuid.uuid4().int >> 65

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (x * FACTOR).astype(np.float32)),
                pb_utils.Tensor("GEN", np.array([self.generation], dtype=np.int64)),
            ]))
        return responses

    def finalize(self):
        with open(COUNTER, "a") as f:
            f.write("-\\n")
'''

CONFIG = {
    "backend": "python",
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [1]}, {"name": "GEN", "datatype": "INT64", "shape": [1]}],
    "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
}


def write_model(repo: Path, name: str = "counted", *, factor: float = 2.0, counter: Path | None = None) -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(json.dumps(CONFIG))
    counter = counter or repo.parent / f"{name}.counter"
    (model_dir / "1" / "model.py").write_text(MODEL_PY.format(counter=str(counter), factor=factor))
    return model_dir


def live_instances(counter: Path) -> int:
    lines = counter.read_text().split() if counter.exists() else []
    return lines.count("+") - lines.count("-")


def touch(path: Path) -> None:
    """Change the file's modification time (a deploy rewriting it), whatever the clock's tick."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def http_input(value: float) -> httpclient.InferInput:
    t = httpclient.InferInput("X", [1], "FP32")
    t.set_data_from_numpy(np.array([value], dtype=np.float32))
    return t


def grpc_input(value: float) -> grpcclient.InferInput:
    t = grpcclient.InferInput("X", [1], "FP32")
    t.set_data_from_numpy(np.array([value], dtype=np.float32))
    return t


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    repo.mkdir()
    write_model(repo)
    return repo


@pytest.fixture
def running(repo: Path) -> Iterator[RunningServer]:
    with serve_in_thread(repo, metrics=False, model_control_mode="explicit", load_models=("counted",)) as server:
        yield server


@pytest.mark.slow
def test_twenty_reloads_under_load_lose_no_request(running: RunningServer, repo: Path) -> None:
    """16 concurrent clients (8 HTTP, 8 gRPC) keep sending while the model is reloaded 20 times
    (its file rewritten, then the load API): every request is answered correctly, and the
    answers come from more than one generation of instances (the reloads took effect)."""
    stop = threading.Event()
    failures: list[str] = []
    answered = [0] * 16
    generations: set[int] = set()

    def http_worker(i: int) -> None:
        with httpclient.InferenceServerClient(running.http_url, network_timeout=120) as client:
            while not stop.is_set():
                try:
                    result = client.infer("counted", [http_input(i)])
                    assert result.as_numpy("Y").tolist() == [2.0 * i]
                    generations.add(int(result.as_numpy("GEN")[0]))
                    answered[i] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                    failures.append(f"http: {exc}")

    def grpc_worker(i: int) -> None:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            while not stop.is_set():
                try:
                    result = client.infer("counted", [grpc_input(i)], client_timeout=120)
                    assert result.as_numpy("Y").tolist() == [2.0 * i]
                    generations.add(int(result.as_numpy("GEN")[0]))
                    answered[i] += 1
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"grpc: {exc}")

    threads = [threading.Thread(target=http_worker if i < 8 else grpc_worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while sum(answered) < 16 and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for load to be under way, not a synchroniser of results
        with httpclient.InferenceServerClient(running.http_url, network_timeout=120) as admin, \
                grpcclient.InferenceServerClient(running.grpc_url) as grpc_admin:
            for n in range(20):
                before = sum(answered)
                touch(repo / "counted" / "1" / "model.py")
                if n % 2:
                    grpc_admin.load_model("counted")
                else:
                    admin.load_model("counted")
                deadline = time.monotonic() + 60
                while sum(answered) == before and time.monotonic() < deadline:
                    time.sleep(0.005)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
    assert all(answered), answered
    assert len(generations) > 1
    assert live_instances(repo.parent / "counted.counter") == 2


def test_load_of_an_unchanged_model_keeps_it(running: RunningServer, repo: Path) -> None:
    """Loading a model whose directory did not change since it loaded leaves it as it is (as
    on Triton); after a change, the same call reloads it."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        first = int(client.infer("counted", [http_input(1)]).as_numpy("GEN")[0])
        client.load_model("counted")
        assert int(client.infer("counted", [http_input(1)]).as_numpy("GEN")[0]) == first
        write_model(repo, factor=3.0)
        client.load_model("counted")
        result = client.infer("counted", [http_input(1)])
        assert result.as_numpy("Y").tolist() == [3.0]
        assert int(result.as_numpy("GEN")[0]) != first
    assert live_instances(repo.parent / "counted.counter") == 2


def test_concurrent_loads_leave_exactly_one_set_of_instances(running: RunningServer, repo: Path) -> None:
    """Eight loads of one model at once (each with a config override, so each really reloads)
    run one after the other: afterwards exactly the configured two instances are alive."""
    counter = repo.parent / "counted.counter"
    config = json.dumps(CONFIG)
    errors: list[Exception] = []

    def load(i: int) -> None:
        try:
            if i % 2:
                with grpcclient.InferenceServerClient(running.grpc_url) as c:
                    c.load_model("counted", config=config)
            else:
                with httpclient.InferenceServerClient(running.http_url, network_timeout=120) as c:
                    c.load_model("counted", config=config)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert counter.read_text().split().count("+") == 2 * 9  # the first load and eight reloads
    assert live_instances(counter) == 2
    with httpclient.InferenceServerClient(running.http_url) as client:
        assert client.infer("counted", [http_input(2)]).as_numpy("Y").tolist() == [4.0]


def test_failed_reload_keeps_the_old_version_serving(running: RunningServer, repo: Path) -> None:
    """A reload that fails (a syntax error in the new model file) is reported to the caller;
    the loaded version keeps answering and the repository index says why the reload failed;
    fixing the file and loading again works."""
    model_py = repo / "counted" / "1" / "model.py"
    good = model_py.read_text()
    model_py.write_text(good + "\ndef broken(:\n")
    with httpclient.InferenceServerClient(running.http_url) as client:
        with pytest.raises(InferenceServerException, match="failed to load 'counted'.*SyntaxError"):
            client.load_model("counted")
        assert client.infer("counted", [http_input(1)]).as_numpy("Y").tolist() == [2.0]
        (entry,) = [e for e in client.get_model_repository_index() if e["name"] == "counted"]
        assert entry["state"] == "READY"
        assert "reload failed" in entry["reason"] and "SyntaxError" in entry["reason"]
        # The same broken file again: still refused (not mistaken for "unchanged").
        with pytest.raises(InferenceServerException, match="SyntaxError"):
            client.load_model("counted")
        write_model(repo, factor=5.0)
        client.load_model("counted")
        assert client.infer("counted", [http_input(1)]).as_numpy("Y").tolist() == [5.0]
        (entry,) = [e for e in client.get_model_repository_index() if e["name"] == "counted"]
        assert entry["state"] == "READY" and not entry.get("reason")
    assert live_instances(repo.parent / "counted.counter") == 2


# -- overrides ------------------------------------------------------------------------------------
def test_file_override_replaces_the_model_code(running: RunningServer, repo: Path) -> None:
    """A load with a config and a ``file:1/model.py`` override (base64 over HTTP, bytes over
    gRPC) serves the new code; a later plain load goes back to the repository's directory."""
    counter = repo.parent / "counted.counter"
    new_code = MODEL_PY.format(counter=str(counter), factor=7.0).encode()
    with httpclient.InferenceServerClient(running.http_url) as client:
        client.load_model("counted", config=json.dumps(CONFIG), files={"file:1/model.py": new_code})
        assert client.infer("counted", [http_input(1)]).as_numpy("Y").tolist() == [7.0]
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        code = MODEL_PY.format(counter=str(counter), factor=11.0).encode()
        client.load_model("counted", config=json.dumps(CONFIG), files={"file:1/model.py": code})
        assert client.infer("counted", [grpc_input(1)]).as_numpy("Y").tolist() == [11.0]
        # A model the repository does not have, created from the override alone.
        client.load_model("created", config=json.dumps(CONFIG), files={"file:1/model.py": code})
        assert client.infer("created", [grpc_input(2)]).as_numpy("Y").tolist() == [22.0]
    with httpclient.InferenceServerClient(running.http_url) as client:
        client.load_model("counted")
        assert client.infer("counted", [http_input(1)]).as_numpy("Y").tolist() == [2.0]
        client.unload_model("created")
    assert live_instances(counter) == 2
    # The override directories went with the models loaded from them.
    root = running.server._override_root
    assert root is not None and list(root.iterdir()) == []


def test_config_override_alone_uses_the_repository_files(running: RunningServer) -> None:
    """A ``config`` override without files reloads from the repository directory with that
    config (here: one instance and another output order)."""
    config = dict(CONFIG, instance_group=[{"count": 1, "kind": "KIND_CPU"}])
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.load_model("counted", config=json.dumps(config))
        served = client.get_model_config("counted", as_json=True)["config"]
        assert served["instance_group"][0]["count"] == 1
        assert client.infer("counted", [grpc_input(3)]).as_numpy("Y").tolist() == [6.0]


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("path", ["../escaped.py", "1/../../escaped.py", "/tmp/escaped.py", "1/./model.py", ""])
def test_file_override_outside_the_model_directory_is_refused(running: RunningServer, repo: Path, path: str) -> None:
    """``file:`` paths that are absolute or climb out of the model directory are refused with
    400 naming the parameter; nothing is written and the loaded model keeps serving."""
    params = {"config": json.dumps(CONFIG), f"file:{path}": base64.b64encode(b"x = 1\n").decode()}
    status, body = post(f"http://{running.http_url}/v2/repository/models/counted/load", {"parameters": params})
    assert status == 400
    assert f"'file:{path}'" in body["error"]
    assert not (repo / "escaped.py").exists() and not (repo.parent / "escaped.py").exists()
    with httpclient.InferenceServerClient(running.http_url) as client:
        assert client.infer("counted", [http_input(1)]).as_numpy("Y").tolist() == [2.0]


def test_file_override_is_refused_over_grpc_too(running: RunningServer) -> None:
    """Over gRPC a climbing path is INVALID_ARGUMENT naming the parameter."""
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        with pytest.raises(InferenceServerException, match=r"'file:\.\./x\.py'") as raised:
            client.load_model("counted", config=json.dumps(CONFIG), files={"file:../x.py": b"x = 1"})
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_file_override_needs_a_config_and_base64(running: RunningServer) -> None:
    """``file:`` without ``config`` (Triton's rule) and content that is not base64 are 400s that
    say so."""
    url = f"http://{running.http_url}/v2/repository/models/counted/load"
    status, body = post(url, {"parameters": {"file:1/model.py": base64.b64encode(b"x = 1").decode()}})
    assert status == 400 and "need a 'config' parameter" in body["error"]
    status, body = post(url, {"parameters": {"config": json.dumps(CONFIG), "file:1/model.py": "not base64!"}})
    assert status == 400 and "'file:1/model.py'" in body["error"] and "base64" in body["error"]


# -- pipelines ------------------------------------------------------------------------------------
def example_request(model: str) -> bytes:
    return (EXAMPLES / "requests" / f"{model}.json").read_bytes()


def infer_json(url: str, model: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


@pytest.mark.parametrize("pipeline", ["iris", "anomaly", "reviews"])
def test_explicit_load_of_an_example_pipeline_loads_its_models(pipeline: str) -> None:
    """In explicit mode with nothing loaded, loading an example pipeline by name loads the
    models it calls (recursively) and it answers its example request; unloading it with
    ``unload_dependents`` unloads them again."""
    with serve_in_thread(EXAMPLES / "pipelines", metrics=False, model_control_mode="explicit") as running, \
            httpclient.InferenceServerClient(running.http_url) as client:
        client.load_model(pipeline)
        answer = infer_json(running.http_url, pipeline, example_request(pipeline))
        assert answer["outputs"]
        loaded = {e["name"] for e in client.get_model_repository_index() if e["state"] == "READY"}
        assert pipeline in loaded and len(loaded) > 1
        client.unload_model(pipeline, unload_dependents=True)
        assert not [e for e in client.get_model_repository_index() if e["state"] == "READY"]


def test_load_model_flag_loads_a_pipeline_with_its_models() -> None:
    """``--load-model iris`` (explicit mode) serves iris, the models it calls and its function steps."""
    with serve_in_thread(
        EXAMPLES / "pipelines", metrics=False, grpc=False, model_control_mode="explicit", load_models=("iris",)
    ) as running:
        answer = infer_json(running.http_url, "iris", example_request("iris"))
        assert {o["name"] for o in answer["outputs"]} >= {"LABEL"}
        ready = {e["name"] for e in running.server.repository_index(ready_only=True)}
        assert ready == {"iris", "iris.standardize", "iris_logreg", "iris.label"}  # two function steps


def pipeline_repo(tmp_path: Path) -> Path:
    """pipe_a: own_a -> shared; pipe_b: shared (every model doubles its input)."""
    repo = tmp_path / "models"
    repo.mkdir()
    write_model(repo, "shared")
    write_model(repo, "own_a")
    for name, first in (("pipe_a", "own_a"), ("pipe_b", "shared")):
        steps = [{"name": "first", "model": first, "inputs": {"X": "X"}}]
        if first != "shared":
            steps.append({"name": "second", "model": "shared", "inputs": {"X": "first.Y"}})
        (repo / name).mkdir()
        (repo / name / "config.yaml").write_text(json.dumps({
            "backend": "pipeline",
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
            "outputs": [{"name": "Y", "datatype": "FP32", "shape": [1]}],
            "pipeline": {"steps": steps, "outputs": {"Y": f"{steps[-1]['name']}.Y"}},
        }))
    return repo


def test_unload_dependents_keeps_models_another_pipeline_uses(tmp_path: Path) -> None:
    """Unloading a pipeline with ``unload_dependents`` (HTTP body parameter, gRPC parameter)
    unloads the models it calls unless another loaded pipeline calls them; without it, they
    stay loaded."""
    repo = pipeline_repo(tmp_path)
    with serve_in_thread(repo, metrics=False, model_control_mode="explicit") as running:
        def ready() -> set[str]:
            return {e["name"] for e in running.server.repository_index(ready_only=True)}

        with httpclient.InferenceServerClient(running.http_url) as http, \
                grpcclient.InferenceServerClient(running.grpc_url) as grpc:
            http.load_model("pipe_a")
            grpc.load_model("pipe_b")
            assert ready() == {"pipe_a", "pipe_b", "own_a", "shared"}
            assert http.infer("pipe_a", [http_input(1)]).as_numpy("Y").tolist() == [4.0]
            http.unload_model("pipe_a", unload_dependents=True)
            assert ready() == {"pipe_b", "shared"}  # shared is still called by pipe_b
            grpc.unload_model("pipe_b", unload_dependents=True)
            assert ready() == set()
            http.load_model("pipe_a")
            http.unload_model("pipe_a")
            assert ready() == {"own_a", "shared"}


# -- cancellation ---------------------------------------------------------------------------------
GATED_PY = '''
import gated_reload_gate as gate
import triton_python_backend_utils as pb_utils

FACTOR = {factor}


class TritonPythonModel:
    def initialize(self, args):
        gate.live.append(self)
        gate.started.set()
        assert gate.go.wait(60), "the test never opened the gate"

    def execute(self, requests):
        x = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", v * FACTOR), pb_utils.Tensor("GEN", v.astype("int64"))])
                for v in x]

    def finalize(self):
        gate.live.remove(self)
'''


@pytest.mark.anyio
async def test_a_cancelled_reload_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A load cancelled while its new instances are being created (the caller went away)
    closes what it created, the loaded version keeps serving, and the server still stops."""
    import sys
    import types

    import anyio

    from dagserve.engine import Server, ServerOptions
    from dagserve.types import InferRequest

    gate = types.SimpleNamespace(started=threading.Event(), go=threading.Event(), live=[])
    monkeypatch.setitem(sys.modules, "gated_reload_gate", gate)
    repo = tmp_path / "models"
    (repo / "gated" / "1").mkdir(parents=True)
    (repo / "gated" / "config.yaml").write_text(json.dumps(CONFIG))
    (repo / "gated" / "1" / "model.py").write_text(GATED_PY.format(factor=2.0))
    gate.go.set()
    options = ServerOptions(model_repository=repo, model_control_mode="explicit", load_models=("gated",))
    with anyio.fail_after(120):
        async with Server(options) as server:
            assert len(gate.live) == 2
            gate.go.clear()
            gate.started.clear()
            (repo / "gated" / "1" / "model.py").write_text(GATED_PY.format(factor=3.0))
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.load_model, "gated")
                await anyio.to_thread.run_sync(gate.started.wait)
                tg.cancel_scope.cancel()
                gate.go.set()
            request = InferRequest(inputs={"X": np.ones(1, np.float32)})
            response = await server.infer("gated", "", request)
            assert response.outputs["Y"].tolist() == [2.0]
            assert len(gate.live) == 2
        assert gate.live == []


def test_reloading_a_member_loses_no_pipeline_request(tmp_path: Path) -> None:
    """Eight clients call a pipeline while the model it ends with is reloaded ten times (the
    pipeline is re-checked against it each time): every pipeline request is answered."""
    repo = pipeline_repo(tmp_path)
    with serve_in_thread(repo, metrics=False, grpc=False, model_control_mode="explicit",
                         load_models=("pipe_a",)) as running:
        stop = threading.Event()
        failures: list[str] = []
        answered = [0] * 8

        def worker(i: int) -> None:
            with httpclient.InferenceServerClient(running.http_url, network_timeout=120) as c:
                while not stop.is_set():
                    try:
                        assert c.infer("pipe_a", [http_input(i)]).as_numpy("Y").tolist() == [4.0 * i]
                        answered[i] += 1
                    except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                        failures.append(str(exc))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            with httpclient.InferenceServerClient(running.http_url, network_timeout=120) as admin:
                for _ in range(10):
                    before = sum(answered)
                    touch(repo / "shared" / "1" / "model.py")
                    admin.load_model("shared")
                    deadline = time.monotonic() + 60
                    while sum(answered) == before and time.monotonic() < deadline:
                        time.sleep(0.005)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        assert failures == []
        assert all(answered), answered
        assert live_instances(tmp_path / "shared.counter") == 2


def test_unload_dependents_must_be_a_bool(running: RunningServer) -> None:
    """A non-boolean ``unload_dependents`` is refused (400 / INVALID_ARGUMENT), not guessed."""
    from tritonclient.grpc import service_pb2

    status, body = post(f"http://{running.http_url}/v2/repository/models/counted/unload",
                        {"parameters": {"unload_dependents": "false"}})
    assert status == 400 and "unload_dependents" in body["error"]
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        request = service_pb2.RepositoryModelUnloadRequest(model_name="counted")
        request.parameters["unload_dependents"].string_param = "false"
        with pytest.raises(Exception, match="unload_dependents") as raised:
            client._client_stub.RepositoryModelUnload(request)
        assert "INVALID_ARGUMENT" in str(raised.value)
        assert client.is_model_ready("counted")


def test_config_override_in_tritons_json_form(running: RunningServer) -> None:
    """A ``config`` in Triton's JSON form of ModelConfig (``input``/``data_type``/``dims``, int64
    dims as strings, parameters as ``string_value``) is read as Triton reads it; a field that
    is in neither schema is refused naming it."""
    triton_json = {
        "backend": "python",
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": ["1"]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": ["1"]},
                   {"name": "GEN", "data_type": "TYPE_INT64", "dims": ["1"]}],
        "instance_group": [{"count": 3, "kind": "KIND_CPU"}],
        "parameters": {"note": {"string_value": "from triton"}},
    }
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.load_model("counted", config=json.dumps(triton_json))
        served = client.get_model_config("counted", as_json=True)["config"]
        assert served["instance_group"][0]["count"] == 3
        assert served["parameters"]["note"]["string_value"] == "from triton"
        assert client.infer("counted", [grpc_input(3)]).as_numpy("Y").tolist() == [6.0]
        with pytest.raises(InferenceServerException, match="load parameter 'config'.*max_batch_sise"):
            client.load_model("counted", config=json.dumps({**triton_json, "max_batch_sise": 4}))
