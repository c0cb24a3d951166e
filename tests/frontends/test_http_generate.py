"""HTTP generate extension: /generate (one answer) and /generate_stream (server-sent events)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "decoupled"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    running: RunningServer
    with (
        serve_in_thread(REPO, grpc=False, metrics=False) as running,
        httpx.Client(base_url=f"http://{running.http_url}", timeout=60) as client,
    ):
        yield client


def events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


def test_generate_maps_json_keys_to_tensors(http: httpx.Client) -> None:
    r = http.post("/v2/models/add_one/generate", json={"X": [1, 2], "LABEL": "hi", "id": "g1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "add_one", "model_version": "1", "id": "g1", "Y": [2.0, 3.0], "LABEL_OUT": "hi"}


def test_generate_stream_sends_each_response(http: httpx.Client) -> None:
    r = http.post("/v2/models/repeat/generate_stream", json={"N": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert [e["OUT"] for e in events(r.text)] == [0, 1, 2]


def test_generate_stream_reports_errors_in_band(http: httpx.Client) -> None:
    r = http.post("/v2/models/repeat/generate_stream", json={"N": -1})
    assert r.status_code == 200  # the stream had started: the error is an event
    assert events(r.text) == [{"error": "N must be >= 0"}]


def test_generate_needs_exactly_one_response(http: httpx.Client) -> None:
    r = http.post("/v2/models/repeat/generate", json={"N": 3})
    assert r.status_code == 400 and "use /generate_stream" in r.json()["error"]
    one = http.post("/v2/models/repeat/generate", json={"N": 1})
    assert one.status_code == 200 and one.json()["OUT"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [({"NOPE": 1, "LABEL": "x"}, "has no input 'NOPE'"), ({"X": ["a"], "LABEL": "x"}, "does not fit datatype FP32")],
)
def test_generate_bad_input(http: httpx.Client, body: dict[str, object], message: str) -> None:
    r = http.post("/v2/models/add_one/generate", json=body)
    assert r.status_code == 400 and message in r.json()["error"]


def test_infer_on_decoupled_model_is_refused(http: httpx.Client) -> None:
    r = http.post(
        "/v2/models/repeat/infer",
        json={"inputs": [{"name": "N", "datatype": "INT32", "shape": [1], "data": [1]}]},
    )
    assert r.status_code == 501 and "generate_stream" in r.json()["error"]
