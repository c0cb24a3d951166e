"""Pipeline features over the wire (tritonclient, HTTP and gRPC): a map's gather modes and
their errors, one_of input rules, typed parameter conditions, a fan-out batched as one."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "pipelines"
MODELS = ("crops", "gathered", "gathered_dsl", "double", "triple", "one_of", "param_when")


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, model_control_mode="explicit", load_models=MODELS, metrics=False) as server:
        yield server


def clients(running: RunningServer) -> list[Any]:
    return [httpclient.InferenceServerClient(running.http_url), grpcclient.InferenceServerClient(running.grpc_url)]


def tensor(client: Any, name: str, array: np.ndarray, datatype: str) -> Any:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    t = module.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


@pytest.mark.parametrize("pipeline", ["gathered", "gathered_dsl"])
def test_map_items_of_different_lengths_concatenate_or_pad(running: RunningServer, pipeline: str) -> None:
    """Items answering 2, 0 and 3 rows: concat gives 5 rows and counts [2, 0, 3]; pad gives
    [3, 3, 2] filled with the stated value, and its named counts; YAML and DSL alike."""
    ns = np.array([[2], [0], [3]], np.int32)
    for client in clients(running):
        result = client.infer(pipeline, [tensor(client, "NS", ns, "INT32")])
        np.testing.assert_array_equal(result.as_numpy("BOXES"), [[2, 0], [2, 1], [3, 0], [3, 1], [3, 2]])
        assert result.as_numpy("LABELS").tolist() == [b"2-0", b"2-1", b"3-0", b"3-1", b"3-2"]
        assert result.as_numpy("COUNTS").tolist() == [2, 0, 3] and result.as_numpy("COUNTS").dtype == np.int64
        padded = result.as_numpy("PADDED")
        assert padded.shape == (3, 3, 2)
        np.testing.assert_array_equal(padded[0], [[2, 0], [2, 1], [-1, -1]])
        np.testing.assert_array_equal(padded[1], np.full((3, 2), -1))
        assert result.as_numpy("ROWS").tolist() == [2, 0, 3]
        assert result.as_numpy("PADDED_LABELS").tolist() == [[b"2-0", b"2-1", b""], [b"", b"", b""],
                                                             [b"3-0", b"3-1", b"3-2"]]
    meta = httpclient.InferenceServerClient(running.http_url).get_model_metadata(pipeline)
    shapes = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert shapes["BOXES"] == ("FP32", [-1, 2]) and shapes["COUNTS"] == ("INT64", [-1])
    assert shapes["PADDED"] == ("FP32", [-1, -1, 2])


def test_ragged_items_without_a_gather_mode_name_step_item_and_shapes(running: RunningServer) -> None:
    """The default (stack) refuses items of different shapes with a message naming the step,
    the item and both shapes, and the gather modes that fit."""
    client = httpclient.InferenceServerClient(running.http_url)
    config = client.get_model_config("gathered")
    assert config["name"] == "gathered"
    with serve_in_thread("tests/repos/bad_requests", model_control_mode="explicit",
                         load_models=("ragged_map",), grpc=False, metrics=False) as bad:
        bad_client = httpclient.InferenceServerClient(bad.http_url)
        ns = np.array([[2], [2], [5]], np.int32)
        with pytest.raises(InferenceServerException) as caught:
            bad_client.infer("ragged_map", [tensor(bad_client, "NS", ns, "INT32")])
    message = str(caught.value)
    assert "step 'make' (model 'ragged'): map item 2 returned output 'Y' with shape [5]" in message
    assert "item 0 returned shape [2]" in message and "'concat'" in message and "'pad'" in message


def test_a_bad_gather_fails_the_pipeline_at_load(tmp_path: Path) -> None:
    """A pad value that does not suit an output's datatype, or counts named like an output,
    make the pipeline UNAVAILABLE with the reason naming the step."""
    shutil.copytree(REPO / "crops", tmp_path / "crops")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.yaml").write_text(
        "backend: pipeline\n"
        "inputs: [{name: NS, datatype: INT32, shape: [-1, 1]}]\n"
        "pipeline:\n"
        "  steps:\n"
        "    - {name: p, model: crops, inputs: {N: NS}, map: N, gather: {mode: pad, value: x}}\n"
        "    - {name: c, model: crops, inputs: {N: NS}, map: N, gather: {mode: concat, counts: LABELS}}\n"
        "  outputs: {B: p.BOXES, L: c.LABELS}\n"
    )
    with serve_in_thread(tmp_path, grpc=False, metrics=False) as server:
        index = httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    reason = next(m["reason"] for m in index if m["name"] == "bad")
    assert "step 'p': gather 'pad' value 'x' does not suit output 'BOXES' of model 'crops', which is FP32" in reason
    assert "step 'c': the gather counts output 'LABELS' has the name of an output of model 'crops'" in reason


def test_one_of_inputs(running: RunningServer) -> None:
    """Exactly one of TWICE and THRICE: either answers; both or neither is a 400 /
    INVALID_ARGUMENT naming the inputs, before any step runs."""
    x = np.array([1, 2], np.float32)
    for client in clients(running):
        assert client.infer("one_of", [tensor(client, "TWICE", x, "FP32")]).as_numpy("Y").tolist() == [2, 4]
        assert client.infer("one_of", [tensor(client, "THRICE", x, "FP32")]).as_numpy("Y").tolist() == [3, 6]
        for given, found in (
            (["TWICE", "THRICE"], "the request gives 'TWICE' and 'THRICE'"),
            ([], "the request gives none of them"),
        ):
            with pytest.raises(InferenceServerException) as caught:
                client.infer("one_of", [tensor(client, name, x, "FP32") for name in given])
            message = str(caught.value)
            assert "pipeline 'one_of' needs exactly one of the inputs 'TWICE', 'THRICE'" in message, message
            assert found in message
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    steps = httpclient.InferenceServerClient(running.http_url).get_inference_statistics("one_of")
    counts = {s["name"]: s["success"]["count"] + s["fail"]["count"] for s in steps["model_stats"][0]["steps"]}
    assert counts == {"two": 2, "three": 2}  # the refused requests ran no step


def test_parameter_conditions_compare_by_type_over_the_wire(running: RunningServer) -> None:
    """`params.explain == true` runs the step for JSON / gRPC true, not for false or when
    absent; the string "true" is a 400 naming the step, the parameter and both types."""
    x = np.array([1, 2], np.float32)
    for client in clients(running):
        inputs = [tensor(client, "X", x, "FP32")]
        assert client.infer("param_when", inputs, parameters={"explain": True}).as_numpy("Y").tolist() == [2, 4]
        assert client.infer("param_when", inputs, parameters={"explain": False}).as_numpy("Y").tolist() == [1, 2]
        assert client.infer("param_when", inputs).as_numpy("Y").tolist() == [1, 2]
        with pytest.raises(InferenceServerException) as caught:
            client.infer("param_when", inputs, parameters={"explain": "true"})
        message = str(caught.value)
        assert "pipeline 'param_when', step 'twice': condition 'params.explain == true' compares params.explain " \
               "with a boolean, but the request sent the string 'true'" in message, message
        assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


def test_a_fan_out_reaches_a_batching_model_as_one_batch(tmp_path: Path) -> None:
    """With no queue delay, an idle model runs a lone request at once; the items of a map are
    submitted together instead, so the first does not run alone: pair_sum's statistics show
    one execution of 7 for 7 pairs."""
    for name in ("splitter", "pair_sum", "mapped"):
        shutil.copytree(REPO / name, tmp_path / name)
    config = tmp_path / "pair_sum" / "config.yaml"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 20000", "max_queue_delay_microseconds: 0"))
    # No auto-complete: it would add preferred_batch_size [8], and the batcher would then wait for a full batch.
    with serve_in_thread(tmp_path, auto_complete_config=False, http=False, metrics=False) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.get_model_config("pair_sum").config.dynamic_batching.preferred_batch_size == []
        for _ in range(3):
            result = client.infer("mapped", [tensor(client, "X", np.arange(14, dtype=np.float32), "FP32")])
            assert result.as_numpy("ROWS")[:, 0].tolist() == [7] * 7  # every pair was served in a batch of 7
        stats = client.get_inference_statistics("pair_sum", as_json=True)["model_stats"][0]
    assert [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in stats["batch_stats"]] == [(7, 3)]
    assert int(stats["inference_count"]) == 21 and int(stats["execution_count"]) == 3
