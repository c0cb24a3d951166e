"""Pipelines served in process: Triton ensembles, YAML and DSL pipelines answer alike, steps
batch at their members, branches overlap, failures cancel, and beyond-Triton control flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import (
    ConfigError,
    InferRequest,
    InvalidInputError,
    ModelExecutionError,
    Pipeline,
    RequestedOutput,
    Server,
    ServerOptions,
)
from dagserve.errors import AlreadyExistsError
from dagserve.testing import in_flight

pytestmark = pytest.mark.anyio

REPO = Path(__file__).parent.parent / "repos" / "pipelines"
CLASSIFY = ("preprocess", "classifier", "postprocess")


def serve(*models: str, repository: Path = REPO) -> Server:
    """A server of the pipeline test repository with only ``models`` loaded."""
    return Server(ServerOptions(model_repository=repository, model_control_mode="explicit", load_models=models))


def copy_repo(tmp_path: Path, *models: str) -> Path:
    """A copy of ``models`` of the pipeline test repository, to change for one test."""
    for name in models:
        shutil.copytree(REPO / name, tmp_path / name)
    return tmp_path


def raw(text: bytes) -> InferRequest:
    return InferRequest(inputs={"RAW": np.frombuffer(text, dtype=np.uint8)})


def floats(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def step_stats(server: Server, pipeline: str) -> dict[str, dict[str, int]]:
    steps = server.statistics(pipeline)["model_stats"][0]["steps"]
    return {s["name"]: {"success": s["success"]["count"], "skipped": s["skipped"]["count"]} for s in steps}


async def test_ensemble_yaml_and_dsl_pipelines_answer_alike() -> None:
    """The three forms of preprocess -> classifier -> postprocess give the same answers."""
    async with serve(*CLASSIFY, "classify_ensemble", "classify_yaml", "classify_dsl") as server:
        for text in (b"hello world", b"\x01\x01\x01\x05", b"dagserve!"):
            answers = [
                await server.infer(name, "", raw(text))
                for name in ("classify_ensemble", "classify_yaml", "classify_dsl")
            ]
            for answer in answers[1:]:
                assert answer.outputs["LABEL"].tolist() == answers[0].outputs["LABEL"].tolist()
                np.testing.assert_allclose(answer.outputs["SCORE"], answers[0].outputs["SCORE"])
        response = await server.infer("classify_yaml", "", raw(b"\x01\x01\x01\x05"))
        assert response.outputs["LABEL"].tolist() == [b"dog"]
        assert response.outputs["LABEL"].shape == (1,) and response.outputs["SCORE"].dtype == np.float32


async def test_ensemble_metadata_and_config_are_tritons() -> None:
    """An ensemble reports platform 'ensemble', its declared tensors, and its config as written."""
    async with serve(*CLASSIFY, "classify_ensemble", "classify_dsl") as server:
        meta = server.model_metadata("classify_ensemble")
        assert meta["platform"] == "ensemble"
        assert meta["inputs"] == [{"name": "RAW", "datatype": "UINT8", "shape": [-1]}]
        assert meta["outputs"] == [
            {"name": "LABEL", "datatype": "BYTES", "shape": [1]},
            {"name": "SCORE", "datatype": "FP32", "shape": [1]},
        ]
        config = server.model_config("classify_ensemble")
        assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == list(CLASSIFY)
        # A pipeline declared in Python serves the inputs and outputs its file declares.
        dsl = server.model_metadata("classify_dsl")
        assert dsl["platform"] == "pipeline" and dsl["outputs"] == meta["outputs"]


async def test_concurrent_pipeline_requests_batch_at_the_member(tmp_path: Path) -> None:
    """Requests in flight together are batched by the classifier's dynamic batcher. Its queue
    delay is made far longer than the test, so the batch leaves when all eight requests are
    queued together (pipelines that ran requests one by one would hang)."""
    repo = copy_repo(tmp_path, *CLASSIFY, "classify_yaml")
    config = repo / "classifier" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 5000", "max_queue_delay_microseconds: 600000000"))
    async with serve(*CLASSIFY, "classify_yaml", repository=repo) as server:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(server.infer, "classify_yaml", "", raw(bytes([i]) * 10))
        batches = server.statistics("classifier")["model_stats"][0]["batch_stats"]
        assert [(b["batch_size"], b["compute_infer"]["count"]) for b in batches] == [(8, 1)]
        assert step_stats(server, "classify_yaml")["classifier"]["success"] == 8


# Y = X + 1 once both branches are inside the model at the same time (a barrier of files):
# branches that ran one after the other would never meet.
MEETING = """
import uuid
from pathlib import Path

import anyio

ROOM = Path({room!r})


async def infer(inputs):
    (ROOM / uuid.uuid4().hex).touch()
    with anyio.fail_after(60):
        while len(list(ROOM.iterdir())) < 2:
            await anyio.sleep(0.005)
    return {{"Y": inputs["X"] + 1}}
"""


async def test_independent_branches_run_concurrently(tmp_path: Path) -> None:
    """The two branches of one request run at the same time: each waits inside its model
    until the other has arrived there too."""
    repo = copy_repo(tmp_path / "repo", "sleepy", "adder", "branches")
    room = tmp_path / "room"
    room.mkdir()
    (repo / "sleepy" / "1" / "model.py").write_text(MEETING.format(room=str(room)))
    async with serve("sleepy", "adder", "branches", repository=repo) as server:
        response = await server.infer("branches", "", InferRequest(inputs={"X": floats(1, 2)}))
    np.testing.assert_array_equal(response.outputs["SUM"], [4, 6])
    assert len(list(room.iterdir())) == 2


async def test_first_failure_cancels_the_rest_and_keeps_its_class() -> None:
    """A failing step ends the request at once (the 10 s branch is cancelled); the error keeps
    its class and names the pipeline, step and model."""
    async with serve("checker", "slow", "adder", "guarded") as server:
        with pytest.raises(InvalidInputError) as info:
            await server.infer("guarded", "", InferRequest(inputs={"X": floats(-1)}))
        # The slow branch is over when the call returns, and it never finished its 10 s.
        assert in_flight(server, "slow") == 0
        slow = server.statistics("slow")["model_stats"][0]
        assert slow["inference_stats"]["success"]["count"] == 0 and slow["execution_count"] == 0
        assert str(info.value) == "pipeline 'guarded', step 'check' (model 'checker'): X must not be negative"
        with pytest.raises(
            ModelExecutionError,
            match=r"pipeline 'guarded', step 'check' \(model 'checker'\): Failed to process the request\(s\) "
            r"for model 'checker_0_0', message: RuntimeError: overflow",
        ):
            await server.infer("guarded", "", InferRequest(inputs={"X": floats(5000)}))
        stats = server.statistics("guarded")["model_stats"][0]
        assert stats["inference_stats"]["fail"]["count"] == 2
        assert stats["steps"][0]["fail"]["count"] == 2


async def test_request_parameters_reach_every_step() -> None:
    """Every step sees the request's own parameters (not priority, which Triton consumes and
    keeps from its models)."""
    async with serve("param_echo", "params_chain") as server:
        request = InferRequest(inputs={"X": floats(1)}, parameters={"tenant": "a", "count": 2, "priority": 1})
        response = await server.infer("params_chain", "", request)
    expected = b'{"count": 2, "tenant": "a"}'
    assert response.outputs["FIRST"].tolist() == [expected]
    assert response.outputs["SECOND"].tolist() == [expected]


async def test_only_steps_needed_for_requested_outputs_run() -> None:
    """Asking for FIRST alone runs the first step only."""
    async with serve("param_echo", "params_chain") as server:
        request = InferRequest(inputs={"X": floats(1)}, outputs=(RequestedOutput(name="FIRST"),))
        response = await server.infer("params_chain", "", request)
        assert list(response.outputs) == ["FIRST"]
        assert step_stats(server, "params_chain") == {
            "first": {"success": 1, "skipped": 0},
            "second": {"success": 0, "skipped": 0},
        }


async def test_switch_routes_on_a_parameter_and_when_skips() -> None:
    """The switch picks one branch per request; the 'when' step and its optional output appear
    only when its condition holds."""
    async with serve("double", "triple", "checker", "routed") as server:
        x = floats(1, 2)
        doubled = await server.infer(
            "routed", "", InferRequest(inputs={"X": x}, parameters={"mode": "double"})
        )
        tripled = await server.infer("routed", "", InferRequest(inputs={"X": x}))
        big = await server.infer(
            "routed", "", InferRequest(inputs={"X": x + 200}, parameters={"mode": "double"})
        )
        assert doubled.outputs["Y"].tolist() == [2, 4] and "BIG" not in doubled.outputs
        assert tripled.outputs["Y"].tolist() == [3, 6]
        assert big.outputs["BIG"].tolist() == [402, 404]
        assert step_stats(server, "routed") == {
            "double": {"success": 2, "skipped": 1},
            "triple": {"success": 1, "skipped": 2},
            "flag": {"success": 1, "skipped": 2},
        }


async def test_map_fans_out_batches_and_gathers() -> None:
    """Each pair is its own call of pair_sum, batched there; zero pairs skip the model cleanly."""
    async with serve("splitter", "pair_sum", "mapped") as server:
        response = await server.infer(
            "mapped", "", InferRequest(inputs={"X": np.arange(14, dtype=np.float32)})
        )
        np.testing.assert_array_equal(response.outputs["SUMS"][:, 0], [1, 5, 9, 13, 17, 21, 25])
        assert response.outputs["ROWS"].max() > 1  # several elements shared one execution
        empty = await server.infer("mapped", "", InferRequest(inputs={"X": np.zeros(0, dtype=np.float32)}))
        assert empty.outputs["SUMS"].shape == (0, 1) and empty.outputs["ROWS"].dtype == np.int32
        # ROWS was not declared in the config: its type was inferred from pair_sum.
        rows = server.model_metadata("mapped")["outputs"][1]
        assert rows == {"name": "ROWS", "datatype": "INT32", "shape": [-1, 1]}


async def test_bounded_loop() -> None:
    """The loop stops when its condition holds, or after max_iterations calls."""
    async with serve("counter", "looped") as server:
        for start, end in ((0, 5), (7, 8), (-20, -10)):
            response = await server.infer(
                "looped", "", InferRequest(inputs={"X": np.array([start], np.int32)})
            )
            assert response.outputs["Y"].tolist() == [end]


async def test_nested_pipeline() -> None:
    """A pipeline may call another pipeline; it loads after it."""
    async with serve(*CLASSIFY, "classify_ensemble", "nested") as server:
        response = await server.infer("nested", "", raw(b"\x01\x01\x01\x05"))
    assert response.outputs["LABEL"].tolist() == [b"dog"]


async def test_batching_ensemble() -> None:
    """A batching ensemble passes its batch to batching members and enforces its max_batch_size."""
    async with serve("bscale", "batched_ensemble") as server:
        x = np.ones((3, 2), dtype=np.float32)
        response = await server.infer("batched_ensemble", "", InferRequest(inputs={"X": x}))
        np.testing.assert_array_equal(response.outputs["Y"], x * 4)
        with pytest.raises(InvalidInputError, match="exceeds the model's max_batch_size 4"):
            await server.infer(
                "batched_ensemble", "", InferRequest(inputs={"X": np.ones((5, 2), np.float32)})
            )


async def test_statistics_have_triton_fields_and_steps() -> None:
    """A pipeline's statistics keep Triton's fields and add one entry per step."""
    async with serve(*CLASSIFY, "classify_ensemble") as server:
        for _ in range(3):
            await server.infer("classify_ensemble", "", raw(b"abc"))
        entry = server.statistics("classify_ensemble")["model_stats"][0]
    assert entry["inference_stats"]["success"]["count"] == 3
    assert entry["inference_count"] == 3 and entry["execution_count"] == 3
    assert [s["name"] for s in entry["steps"]] == list(CLASSIFY)
    clf = entry["steps"][1]
    assert clf["model"] == "classifier" and clf["success"]["count"] == 3
    assert clf["compute_infer"]["ns"] > 0 and clf["queue"]["count"] == 3


async def test_add_pipeline_serves_a_dsl_pipeline_in_process_without_copies() -> None:
    """Server.add_pipeline serves a Pipeline built in Python; tensors pass between steps as the
    same arrays (the output here is the request's own input array)."""
    p = Pipeline("passthrough")
    x = p.input("X", "FP32", [-1])
    first = p.step("first", "checker", inputs={"X": x})
    second = p.step("second", "checker", inputs={"X": first["Y"]})
    p.output("Y", second["Y"])
    async with serve("checker") as server:
        await server.add_pipeline(p.build())
        assert server.model_metadata("passthrough")["outputs"] == [
            {"name": "Y", "datatype": "FP32", "shape": [-1]}
        ]
        data = floats(1, 2, 3)
        response = await server.infer("passthrough", "", InferRequest(inputs={"X": data}))
        assert np.shares_memory(response.outputs["Y"], data)
        with pytest.raises(AlreadyExistsError):
            await server.add_pipeline(p.build())
        bad = Pipeline("bad")
        bad.input("X", "FP32", [-1])
        bad.step("s", "checker", inputs={"X": "X", "NOPE": "X"})
        bad.output("Y", "s.Y")
        with pytest.raises(ConfigError, match="step 's': model 'checker' has no input 'NOPE'"):
            await server.add_pipeline(bad.build())
        assert "bad" not in server.model_names()


async def test_max_inflight_requests_bounds_each_step() -> None:
    """With max_inflight_requests 1, concurrent requests take turns at a step (which the step's
    queue time shows), although its model could serve two at once."""
    p = Pipeline("one_at_a_time", max_inflight_requests=1)
    p.input("X", "FP32", [-1])
    p.step("nap", "sleepy", inputs={"X": "X"})
    p.output("Y", "nap.Y")
    async with serve("sleepy") as server:
        await server.add_pipeline(p.build())
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(server.infer, "one_at_a_time", "", InferRequest(inputs={"X": floats(1)}))
        nap = server.statistics("one_at_a_time")["model_stats"][0]["steps"][0]
    # One request waited for the other's 0.3 s nap (a lower bound: a busy machine only adds).
    assert nap["queue"]["ns"] >= 0.2e9


async def test_request_timeout_bounds_the_whole_pipeline(tmp_path: Path) -> None:
    """The `timeout` parameter (µs) is a deadline for the whole pipeline: its steps are cancelled."""
    from dagserve.errors import RequestTimeoutError as DeadlineError

    (tmp_path / "nap" / "1").mkdir(parents=True)
    (tmp_path / "nap" / "1" / "model.py").write_text(
        "import anyio\n\nasync def infer(inputs):\n    await anyio.sleep(float(inputs['S'][0]))\n    return {'S': inputs['S']}\n"
    )
    (tmp_path / "nap" / "config.yaml").write_text(
        "backend: python\ninputs: [{name: S, datatype: FP32, shape: [1]}]\noutputs: [{name: S, datatype: FP32, shape: [1]}]\n"
    )
    (tmp_path / "naps").mkdir()
    (tmp_path / "naps" / "config.yaml").write_text(
        "backend: pipeline\ninputs: [{name: S, datatype: FP32, shape: [1]}]\n"
        "outputs: [{name: S, datatype: FP32, shape: [1]}]\n"
        "pipeline:\n  steps:\n    - {name: one, model: nap, inputs: {S: S}}\n"
        "    - {name: two, model: nap, inputs: {S: one.S}}\n  outputs: {S: two.S}\n"
    )
    async with Server(model_repository=tmp_path) as server:
        fast = InferRequest(inputs={"S": np.array([0.01], np.float32)}, parameters={"timeout": 60_000_000})
        assert (await server.infer("naps", "", fast)).outputs["S"][0] == np.float32(0.01)
        # Naps of 60 s each against a 50 ms deadline: the bound only guards against a hang.
        slow = InferRequest(inputs={"S": np.array([60], np.float32)}, parameters={"timeout": 50_000})
        with anyio.fail_after(30), pytest.raises(DeadlineError, match="request timeout"):
            await server.infer("naps", "", slow)
        assert in_flight(server, "nap") == 0
