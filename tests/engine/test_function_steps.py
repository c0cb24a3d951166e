"""Function steps end to end: Python functions declared with ``@dagserve.function`` (YAML
``function: module:name``) or ``@pipeline.function`` (DSL) serve as models of their own,
``<pipeline>.<step>``, through a real server and the stock tritonclient (HTTP and gRPC)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import FileGate, RunningServer, serve_in_thread, wait_until

REPO = Path(__file__).parent.parent / "repos" / "functions"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileGate]:
    mp = pytest.MonkeyPatch()
    gate = FileGate(tmp_path_factory.mktemp("gate"))
    mp.setenv("FUNCTION_GATE", str(gate.path))
    try:
        yield gate
    finally:
        gate.release()
        mp.undo()


@pytest.fixture(scope="module")
def running(gate: FileGate) -> Iterator[RunningServer]:
    with serve_in_thread(REPO, model_control_mode="explicit", load_models=("*",)) as running:
        yield running


@pytest.fixture(scope="module")
def client(running: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(running.http_url) as c:
        yield c


def http_input(name: str, array: np.ndarray, datatype: str = "FP32") -> httpclient.InferInput:
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def test_yaml_function_steps_answer_over_http_and_grpc(running: RunningServer, client: httpclient.InferenceServerClient) -> None:
    """A YAML pipeline of two function steps (one in a sub-package module) and a model
    answers both protocols with the functions' results."""
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    result = client.infer("yaml_fn", [http_input("X", x)])
    np.testing.assert_array_equal(result.as_numpy("Y"), x * 6)
    np.testing.assert_array_equal(result.as_numpy("TOTAL"), [[9], [21]])
    with grpcclient.InferenceServerClient(running.grpc_url) as g:
        t = grpcclient.InferInput("X", [2, 2], "FP32")
        t.set_data_from_numpy(x)
        answer = g.infer("yaml_fn", [t])
        np.testing.assert_array_equal(answer.as_numpy("TOTAL"), [[9], [21]])
        assert g.get_model_metadata("yaml_fn.total").inputs[0].datatype == "FP32"


def test_function_steps_are_models_in_index_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    """Each function step is listed as model <pipeline>.<step>, READY, with its declared
    tensors (the batch dimension first) and a dynamic batcher; it answers direct calls too."""
    index = {e["name"]: e["state"] for e in client.get_model_repository_index()}
    for name in ("yaml_fn.scale", "yaml_fn.total", "dsl_fn.check"):
        assert index[name] == "READY"
    meta = client.get_model_metadata("yaml_fn.scale")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    config = client.get_model_config("dsl_fn.check")
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert config["parameters"]["execution"]["string_value"] == "inline"
    direct = client.infer("yaml_fn.scale", [http_input("x", np.ones((1, 2), np.float32))])
    np.testing.assert_array_equal(direct.as_numpy("y"), [[3, 3]])


def test_dsl_function_step_answers_and_converts_lists(client: httpclient.InferenceServerClient) -> None:
    """A function declared with @pipeline.function in pipeline.py runs as a step; the list it
    returns for an INT64 output arrives as INT64."""
    x = np.array([[1, 2]], dtype=np.float32)
    result = client.infer("dsl_fn", [http_input("X", x)])
    np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)
    count = result.as_numpy("COUNT")
    assert count.dtype == np.int64 and count.tolist() == [[2]]


def test_function_step_batches_concurrent_requests(
    running: RunningServer, client: httpclient.InferenceServerClient, gate: FileGate
) -> None:
    """While one call of the function is held, four more pipeline requests queue at the
    function's own batcher and then run as one batch: 5 inferences, 2 executions."""
    before = client.get_inference_statistics("yaml_fn.scale")["model_stats"][0]
    with httpclient.InferenceServerClient(running.http_url, concurrency=5) as c:
        held = c.async_infer("yaml_fn", [http_input("X", np.full((1, 2), 99, np.float32))])
        gate.wait_started()
        rest = [c.async_infer("yaml_fn", [http_input("X", np.full((1, 2), i, np.float32))]) for i in range(4)]
        wait_until(lambda: running.in_flight("yaml_fn.scale") == 5, what="4 requests queued behind the held one")
        gate.release()
        assert held.get_result().as_numpy("Y").tolist() == [[594, 594]]
        for i, r in enumerate(rest):
            assert r.get_result().as_numpy("Y").tolist() == [[6 * i, 6 * i]]
    after = client.get_inference_statistics("yaml_fn.scale")["model_stats"][0]
    assert int(after["inference_count"]) - int(before["inference_count"]) == 5
    assert int(after["execution_count"]) - int(before["execution_count"]) == 2
    assert 4 in {int(b["batch_size"]) for b in after["batch_stats"]}


def test_function_that_raises_answers_with_its_message(running: RunningServer, client: httpclient.InferenceServerClient) -> None:
    """An exception in a function step reaches the client as Triton words it, with the
    pipeline, the step and the exception's own message; over gRPC as INTERNAL."""
    with pytest.raises(InferenceServerException) as caught:
        client.infer("dsl_fn", [http_input("X", np.array([[1, -5]], np.float32))])
    message = caught.value.message()
    assert "pipeline 'dsl_fn', step 'check'" in message
    assert "Failed to process the request(s) for model 'dsl_fn.check" in message
    assert "ValueError: negative input: -5.0" in message
    assert caught.value.status() == "500"
    with grpcclient.InferenceServerClient(running.grpc_url) as g:
        t = grpcclient.InferInput("X", [1, 2], "FP32")
        t.set_data_from_numpy(np.array([[1, -5]], np.float32))
        with pytest.raises(InferenceServerException, match="ValueError: negative input: -5.0") as grpc_caught:
            g.infer("dsl_fn", [t])
        assert grpc_caught.value.status() == "StatusCode.INTERNAL"


def test_statistics_and_metrics_name_the_function_model(running: RunningServer, client: httpclient.InferenceServerClient) -> None:
    """The function model has its own statistics entry and nv_inference_* series, and the
    pipeline's per-step statistics name it."""
    client.infer("dsl_fn", [http_input("X", np.ones((1, 2), np.float32))])
    stats = client.get_inference_statistics("dsl_fn.check")["model_stats"][0]
    assert int(stats["inference_count"]) >= 1
    steps = client.get_inference_statistics("dsl_fn")["model_stats"][0]["steps"]
    assert {s["name"]: s["model"] for s in steps} == {"check": "dsl_fn.check", "double": "double"}
    import urllib.request

    with urllib.request.urlopen(f"http://{running.metrics_url}/metrics") as r:
        text = r.read().decode()
    assert re.search(r'nv_inference_count\{model="dsl_fn.check",version="1"\} [1-9]', text)


def test_function_model_has_the_latency_histogram_metrics_config_asks_for(gate: FileGate) -> None:
    """With --metrics-config histogram_latencies=true a function model gets Triton's
    first-response histogram as any model does (its version is configured like the others)."""
    import urllib.request

    from dagserve import MetricsConfig

    with serve_in_thread(REPO, grpc=False, model_control_mode="explicit", load_models=("dsl_fn",),
                         metrics_config=MetricsConfig(histogram_latencies=True)) as running:
        with httpclient.InferenceServerClient(running.http_url) as c:
            for _ in range(3):
                c.infer("dsl_fn", [http_input("X", np.ones((1, 2), np.float32))])
        with urllib.request.urlopen(f"http://{running.metrics_url}/metrics") as r:
            text = r.read().decode()
    assert re.search(r'nv_inference_first_response_histogram_ms_count\{model="dsl_fn.check",version="1"\} 3', text)


def test_function_models_load_and_unload_with_their_pipeline(client: httpclient.InferenceServerClient) -> None:
    """A function model cannot be unloaded on its own; unloading the pipeline removes it, and
    loading the pipeline brings it back."""
    with pytest.raises(InferenceServerException, match="unload 'dsl_fn'"):
        client.unload_model("dsl_fn.check")
    client.unload_model("dsl_fn")
    assert "dsl_fn.check" not in {e["name"] for e in client.get_model_repository_index()}
    client.load_model("dsl_fn")
    assert client.is_model_ready("dsl_fn.check")
    result = client.infer("dsl_fn", [http_input("X", np.ones((1, 2), np.float32))])
    assert result.as_numpy("COUNT").tolist() == [[2]]


# -- errors at load -----------------------------------------------------------------------------
def broken_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "double", repo / "double")
    return repo


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def index_reason(running: RunningServer, name: str) -> str:
    (entry,) = [e for e in running.server.repository_index() if e["name"] == name]
    assert entry["state"] == "UNAVAILABLE"
    return str(entry["reason"])


def test_declaration_contradicting_its_annotation_fails_at_its_line(tmp_path: Path) -> None:
    """A function declared FP64 but annotated float32 fails the YAML pipeline's load with the
    module's file and the line of its declaration; the rest of the repository serves."""
    repo = broken_repo(tmp_path)
    (repo / "p").mkdir()
    (repo / "p" / "config.yaml").write_text(
        "backend: pipeline\ninputs: [{name: X, datatype: FP32, shape: [2]}]\n"
        "pipeline:\n  steps:\n    - {name: s, function: 'steps:f', inputs: {x: X}}\n  outputs: {Y: s.y}\n"
    )
    steps = repo / "p" / "steps.py"
    steps.write_text(
        "import numpy as np\nfrom numpy.typing import NDArray\nimport dagserve\n\n\n"
        "@dagserve.function(inputs={'x': ('FP64', [2])}, outputs={'y': ('FP32', [2])})\n"
        "def f(x: NDArray[np.float32]):\n    return x\n"
    )
    with serve_in_thread(repo, http=False, grpc=False, metrics=False, strict_readiness=False) as running:
        reason = index_reason(running, "p")
        assert f"{steps}:{line_of(steps, '@dagserve.function')}: function 'f': input 'x' is declared FP64 but annotated FP32" in reason
        assert f"{repo / 'p' / 'config.yaml'}:5" in reason  # the step that names it
        assert running.server.model_ready("double")


def test_wiring_mismatch_names_the_step_line_and_the_function(tmp_path: Path) -> None:
    """A DSL step feeding FP32 into a function input declared INT32 fails the load at the
    step() line, naming the function and where it is declared."""
    repo = broken_repo(tmp_path)
    (repo / "p").mkdir()
    (repo / "p" / "config.yaml").write_text("backend: pipeline\n")
    pipeline_py = repo / "p" / "pipeline.py"
    pipeline_py.write_text(
        "from dagserve import Pipeline\n\npipeline = Pipeline()\n\n\n"
        "@pipeline.function(inputs={'x': ('INT32', [2])}, outputs={'y': ('INT32', [2])})\n"
        "def ints(x):\n    return x\n\n\n"
        "x = pipeline.input('X', 'FP32', [2])\n"
        "s = pipeline.step('s', ints, inputs={'x': x})\n"
        "pipeline.output('Y', s['y'])\n"
    )
    with serve_in_thread(repo, http=False, grpc=False, metrics=False, strict_readiness=False) as running:
        reason = index_reason(running, "p")
        step_line, def_line = line_of(pipeline_py, "pipeline.step("), line_of(pipeline_py, "@pipeline.function")
        assert f"{pipeline_py}:{step_line}: pipeline 'p', step 's'" in reason
        assert f"function ints ({pipeline_py}:{def_line}) input 'x' expects INT32" in reason


def test_yaml_function_reference_errors_name_the_field(tmp_path: Path) -> None:
    """A missing module and a plain (undeclared) function are errors at the step's field."""
    repo = broken_repo(tmp_path)
    for name, ref in (("missing", "nowhere:f"), ("plain", "steps:f")):
        (repo / name).mkdir()
        (repo / name / "config.yaml").write_text(
            "backend: pipeline\ninputs: [{name: X, datatype: FP32, shape: [2]}]\n"
            f"pipeline:\n  steps:\n    - {{name: s, function: '{ref}', inputs: {{x: X}}}}\n  outputs: {{Y: s.y}}\n"
        )
    (repo / "plain" / "steps.py").write_text("def f(x):\n    return x\n")
    with serve_in_thread(repo, http=False, grpc=False, metrics=False, strict_readiness=False) as running:
        missing = index_reason(running, "missing")
        assert "field 'pipeline.steps[0].function': module 'nowhere' not found" in missing
        plain = index_reason(running, "plain")
        assert "'steps:f' is a function, not a declared step function: decorate it with @dagserve.function" in plain
