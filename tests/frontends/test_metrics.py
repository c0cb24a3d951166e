"""The metrics endpoint: Triton's nv_inference_* counters per model, and per pipeline step."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as httpclient

from dagserve.testing import serve_in_thread

PIPELINES = Path(__file__).parents[1] / "repos" / "pipelines"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in Prometheus text (labels in any order)."""
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{labels}")


def test_model_and_step_counters_follow_requests() -> None:
    with serve_in_thread(PIPELINES, grpc=False) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        raw = httpclient.InferInput("RAW", [8], "UINT8")
        raw.set_data_from_numpy(np.arange(8, dtype=np.uint8))
        for _ in range(3):
            client.infer("classify_ensemble", [raw])
        bad = httpclient.InferInput("RAW", [8], "INT32")
        bad.set_data_from_numpy(np.arange(8, dtype=np.int32))
        try:
            client.infer("classify_ensemble", [bad])
        except Exception:  # noqa: BLE001 - the failure is the point
            pass
        text = httpx.get(f"http://{running.metrics_url}/metrics").text
    assert sample(text, "nv_inference_request_success", model="classify_ensemble", version="1") == 3
    assert sample(text, "nv_inference_count", model="preprocess", version="1") == 3
    assert sample(text, "nv_inference_request_duration_us", model="postprocess", version="1") > 0
    assert sample(text, "dagserve_pipeline_step_success", pipeline="classify_ensemble", model="classifier") == 3
    assert "# TYPE nv_inference_count counter" in text
