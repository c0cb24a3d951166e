"""Sequence batching over the wire with the ``direct`` strategy: every control kind (START as
fp32, END as bool, READY as int32, CORRID as a string) reaches the model with the right value,
state follows each sequence, and sequences interleaved across HTTP and gRPC stay apart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

CONFIG = """
name: "seq"
backend: "python"
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  direct { }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [ false, true ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
  state [ { input_name: "N_IN" output_name: "N_OUT" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } } ]
}
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [
  { name: "START_SEEN" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "END_SEEN" data_type: TYPE_BOOL dims: [ 1 ] },
  { name: "READY_SEEN" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "CORR" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] }
]
"""

# N_IN holds the running sum of X over the sequence.
MODEL = '''
def infer(inputs):
    total = inputs["N_IN"] + inputs["X"]
    return {"START_SEEN": inputs["START"], "END_SEEN": inputs["END"], "READY_SEEN": inputs["READY"],
            "CORR": inputs["CORRID"], "SUM": total, "N_OUT": total}
'''


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    (repo / "seq" / "1").mkdir(parents=True)
    (repo / "seq" / "1" / "model.py").write_text(MODEL)
    (repo / "seq" / "config.pbtxt").write_text(CONFIG)
    with serve_in_thread(repo, metrics=False) as server:
        yield server


def _step(running: RunningServer, protocol: str, seq: str, x: int, *, start: bool = False,
          end: bool = False) -> dict[str, Any]:
    mod: Any = httpclient if protocol == "http" else grpcclient
    url = running.http_url if protocol == "http" else running.grpc_url
    with mod.InferenceServerClient(url) as client:
        tensor = mod.InferInput("X", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[x]], np.int32))
        result = client.infer("seq", [tensor], sequence_id=seq, sequence_start=start, sequence_end=end)
        return {name: result.as_numpy(name)[0, 0]
                for name in ("START_SEEN", "END_SEEN", "READY_SEEN", "CORR", "SUM")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_control_reaches_the_model(running: RunningServer, protocol: str) -> None:
    """START / END in their configured fp32 and bool forms, READY 1 on every request, CORRID
    the string id, and the running sum kept in the implicit state."""
    seq = f"user-{protocol}"
    steps = [_step(running, protocol, seq, 3, start=True), _step(running, protocol, seq, 4),
             _step(running, protocol, seq, 5, end=True)]
    assert [s["START_SEEN"] for s in steps] == [1.0, 0.0, 0.0]
    assert [bool(s["END_SEEN"]) for s in steps] == [False, False, True]
    assert [s["READY_SEEN"] for s in steps] == [1, 1, 1]
    assert [s["CORR"] for s in steps] == [seq.encode()] * 3
    assert [s["SUM"] for s in steps] == [3, 7, 12]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_request_that_starts_and_ends(running: RunningServer, protocol: str) -> None:
    """A request with both flags sees START and END true, fresh state, and ends the sequence:
    a next request without START is refused naming the sequence."""
    seq = f"single-{protocol}"
    only = _step(running, protocol, seq, 9, start=True, end=True)
    assert only["START_SEEN"] == 1.0 and bool(only["END_SEEN"]) and only["SUM"] == 9
    with pytest.raises(InferenceServerException) as info:
        _step(running, protocol, seq, 1)
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert f"sequence '{seq}' has no START request" in info.value.message()


def test_sequences_interleaved_across_protocols_stay_apart(running: RunningServer) -> None:
    """Two sequences, each request alternating between HTTP and gRPC, keep their own sums and ids."""
    a, b = "interleaved-a", "interleaved-b"
    protocols = ["http", "grpc"]
    results: dict[str, list[dict[str, Any]]] = {a: [], b: []}
    for i in range(4):
        for seq, offset in ((a, 0), (b, 1)):
            protocol = protocols[(i + offset) % 2]
            results[seq].append(_step(running, protocol, seq, 10 if seq == a else 100, start=i == 0, end=i == 3))
    assert [r["SUM"] for r in results[a]] == [10, 20, 30, 40]
    assert [r["SUM"] for r in results[b]] == [100, 200, 300, 400]
    assert {r["CORR"] for r in results[a]} == {a.encode()}
    assert {r["CORR"] for r in results[b]} == {b.encode()}
