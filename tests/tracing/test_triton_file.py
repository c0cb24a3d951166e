"""``triton`` trace mode writes Triton's JSON trace file: one trace per model call with its
model, version, request id and (for a pipeline's member) the pipeline's trace as parent, and
Triton's timestamps; every ``log_frequency`` traces to ``<file>.<n>``, else at shutdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dagserve import TraceConfig
from dagserve.testing import serve_in_thread

PIPELINES = Path(__file__).parent.parent / "repos" / "pipelines"


def classify(module: Any, url: str, request_id: str) -> None:
    data = np.frombuffer(b"\x01\x05", dtype=np.uint8)
    item = module.InferInput("RAW", list(data.shape), "UINT8")
    item.set_data_from_numpy(data)
    with module.InferenceServerClient(url) as client:
        client.infer("classify_yaml", [item], request_id=request_id)


def traces(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Triton's records grouped by trace id: the model record plus its timestamp names."""
    found: dict[int, dict[str, Any]] = {}
    for record in records:
        entry = found.setdefault(record["id"], {"timestamps": []})
        if "timestamps" in record:
            entry["timestamps"] += [t["name"] for t in record["timestamps"]]
        else:
            entry.update(record)
    return found


def test_pipeline_traces_with_parents_and_timestamps(tmp_path: Path) -> None:
    """With log_frequency 1 each request's traces land in the next indexed file at once;
    members name the pipeline's trace as parent, and the timestamps are Triton's."""
    path = tmp_path / "trace.json"
    trace = TraceConfig(level=("TIMESTAMPS",), rate=1, file=str(path), log_frequency=1)
    with serve_in_thread(
        PIPELINES, metrics=False, model_control_mode="explicit", load_models=("classify_yaml",), trace=trace
    ) as running:
        classify(httpclient, running.http_url, "one")
        classify(grpcclient, running.grpc_url, "two")
        first = traces(json.loads((tmp_path / "trace.json.0").read_text()))
        second = traces(json.loads((tmp_path / "trace.json.1").read_text()))
    (top,) = [t for t in first.values() if "parent_id" not in t]
    assert (top["model_name"], top["model_version"], top["request_id"]) == ("classify_yaml", 1, "one")
    members = sorted((t for t in first.values() if "parent_id" in t), key=lambda t: t["id"])
    assert [m["model_name"] for m in members] == ["preprocess", "classifier", "postprocess"]
    assert all(m["parent_id"] == top["id"] for m in members)
    for name in ("HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "REQUEST_END",
                 "HTTP_SEND_START", "HTTP_SEND_END"):
        assert name in top["timestamps"], name
    for member in members:
        assert member["timestamps"] == ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END"]
    (top2,) = [t for t in second.values() if "parent_id" not in t]
    assert top2["request_id"] == "two" and "GRPC_SEND_END" in top2["timestamps"]
    assert not (tmp_path / "trace.json").exists()


def test_traces_written_at_shutdown_and_when_count_runs_out(tmp_path: Path) -> None:
    """With log_frequency 0 the traces go to the file itself when the server stops; a
    trace_count that runs out writes what was collected to an indexed file at once."""
    path = tmp_path / "trace.json"
    with serve_in_thread(
        PIPELINES, grpc=False, metrics=False, model_control_mode="explicit", load_models=("preprocess",),
        trace=TraceConfig(level=("TIMESTAMPS",), rate=1, file=str(path)),
    ) as running:
        data = np.frombuffer(b"\x01", dtype=np.uint8)
        item = httpclient.InferInput("RAW", [1], "UINT8")
        item.set_data_from_numpy(data)
        with httpclient.InferenceServerClient(running.http_url) as client:
            client.infer("preprocess", [item])
            client.infer("preprocess", [item])
            assert not path.exists()
            client.update_trace_settings(settings={"trace_count": "1"})
            client.infer("preprocess", [item])
            client.infer("preprocess", [item])  # not traced: the count ran out
            assert len(traces(json.loads((tmp_path / "trace.json.0").read_text()))) == 1
    assert len(traces(json.loads(path.read_text()))) == 2
