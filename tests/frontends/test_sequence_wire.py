"""Sequence parameters (sequence_id / sequence_start / sequence_end) over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "sequence"


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        yield running


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("seq_id", [1234, "session-a"])
def test_running_sum_over_the_wire(running: RunningServer, protocol: str, seq_id: int | str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    url = running.http_url if protocol == "http" else running.grpc_url
    client = module.InferenceServerClient(url)
    totals = []
    try:
        for i, x in enumerate([3, 4, 5]):
            inp = module.InferInput("X", [1, 1], "INT32")
            inp.set_data_from_numpy(np.array([[x]], np.int32))
            outputs = [module.InferRequestedOutput("TOTAL")]
            if isinstance(seq_id, str):
                # A string id needs a CORRID control of type STRING; this model's is UINT64.
                with pytest.raises(InferenceServerException, match="is a string") as info:
                    client.infer("accumulate", [inp], outputs=outputs, sequence_id=seq_id, sequence_start=True)
                assert info.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
                return
            result = client.infer(
                "accumulate", [inp], outputs=outputs, sequence_id=seq_id, sequence_start=i == 0, sequence_end=i == 2
            )
            totals.append(int(result.as_numpy("TOTAL")[0, 0]))
    finally:
        client.close()
    assert totals == [3, 7, 12]
