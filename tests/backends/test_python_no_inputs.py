"""A Python model that declares no inputs: legal, as on Triton (it loads and is called with no
inputs), but flagged, since it is usually a forgotten ``inputs:``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import serve_in_thread
from dagserve.validation import validate_repository


def make_repo(root: Path) -> Path:
    model = root / "constant"
    (model / "1").mkdir(parents=True)
    (model / "config.yaml").write_text("backend: python\noutputs: [{name: OUT, datatype: INT32, shape: [1]}]\n")
    (model / "1" / "model.py").write_text(
        "import numpy as np\n\n\ndef infer(inputs):\n    return {'OUT': np.array([len(inputs) + 42], np.int32)}\n"
    )
    return root


def test_validate_warns_with_the_fix(tmp_path: Path) -> None:
    """`dagserve validate` passes the model with a warning that says how to declare inputs."""
    report = validate_repository(make_repo(tmp_path))
    assert report.ok
    (warning,) = report.warnings
    assert "model 'constant' declares no inputs, so it can only be called with none" in str(warning)
    assert "declare them in its config, e.g. inputs: [{name: X" in str(warning)


def test_served_and_called_with_no_inputs(tmp_path: Path) -> None:
    """The model answers a request with no inputs over HTTP and gRPC (Triton does too); a
    request that sends an input is refused with a message saying the config declares none."""
    with serve_in_thread(make_repo(tmp_path), metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        assert http.infer("constant", []).as_numpy("OUT").tolist() == [42]
        assert grpc.infer("constant", []).as_numpy("OUT").tolist() == [42]
        x = httpclient.InferInput("X", [1], "FP32")
        x.set_data_from_numpy(np.zeros(1, np.float32))
        with pytest.raises(InferenceServerException) as caught:
            http.infer("constant", [x])
    assert caught.value.status() == "400"
    assert "model 'constant' has no input 'X' (its inputs: none: its config declares no inputs)" in str(caught.value)
