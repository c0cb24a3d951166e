"""Decoupled models over gRPC ModelStreamInfer with tritonclient's streaming API."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "decoupled"


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, http=False, metrics=False) as running:
        yield running


def stream(running: RunningServer, requests: list[tuple[str, int]], empty_final: bool) -> list[object]:
    results: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(running.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error if error else result))
    for request_id, n in requests:
        x = grpcclient.InferInput("N", [1], "INT32")
        x.set_data_from_numpy(np.array([n], np.int32))
        client.async_stream_infer("repeat", [x], request_id=request_id, enable_empty_final_response=empty_final)
    client.stop_stream()  # waits for the server to finish the stream
    client.close()
    out = []
    while not results.empty():
        out.append(results.get())
    return out


def test_all_responses_then_final_flag(running: RunningServer) -> None:
    got = stream(running, [("a", 3)], empty_final=True)
    assert len(got) == 4
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r in got]  # type: ignore[attr-defined]
    assert finals == [False, False, False, True]
    assert [int(r.as_numpy("OUT")[0]) for r in got[:3]] == [0, 1, 2]  # type: ignore[attr-defined]


def test_without_empty_final_only_data_responses(running: RunningServer) -> None:
    got = stream(running, [("a", 2), ("b", 0)], empty_final=False)
    assert len(got) == 2
    assert sorted(int(r.as_numpy("OUT")[0]) for r in got) == [0, 1]  # type: ignore[attr-defined]


def test_error_in_stream_keeps_stream_open(running: RunningServer) -> None:
    got = stream(running, [("bad", -1), ("good", 1)], empty_final=False)
    errors = [g for g in got if isinstance(g, Exception)]
    assert len(errors) == 1 and "N must be >= 0" in str(errors[0])
    assert [int(g.as_numpy("OUT")[0]) for g in got if not isinstance(g, Exception)] == [0]  # type: ignore[attr-defined]


def test_unary_infer_refuses_decoupled(running: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(running.grpc_url)
    x = grpcclient.InferInput("N", [1], "INT32")
    x.set_data_from_numpy(np.array([1], np.int32))
    with pytest.raises(InferenceServerException, match="decoupled") as info:
        client.infer("repeat", [x])
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
