"""The metrics endpoint: Triton's nv_inference_* counters per model, and per pipeline step."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import serve_in_thread

PIPELINES = Path(__file__).parents[1] / "repos" / "pipelines"


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (in any order), in
    Prometheus text: one sample, or e.g. every ``reason`` of nv_inference_request_failure."""
    values = []
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            values.append(float(match.group(2)))
    if not values:
        raise AssertionError(f"no sample {name}{labels}")
    return sum(values)


FAMILIES = (
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "dagserve_pipeline_step_success", "dagserve_pipeline_step_failure", "dagserve_pipeline_step_skipped",
    "dagserve_pipeline_step_duration_us", "dagserve_pipeline_step_queue_duration_us",
)


def test_model_and_step_counters_follow_requests() -> None:
    """Successes, failures, inference and execution counts and the duration families of the
    models and pipeline steps move exactly with the requests sent (a fresh server)."""
    with (
        serve_in_thread(PIPELINES, grpc=False) as running,
        httpclient.InferenceServerClient(running.http_url) as client,
        httpx.Client(base_url=f"http://{running.metrics_url}", timeout=60) as metrics,
    ):
        raw = httpclient.InferInput("RAW", [8], "UINT8")
        raw.set_data_from_numpy(np.arange(8, dtype=np.uint8))
        for _ in range(3):
            client.infer("classify_ensemble", [raw])
        negative = httpclient.InferInput("X", [1], "FP32")
        negative.set_data_from_numpy(np.array([-1], np.float32))
        with pytest.raises(InferenceServerException, match="X must not be negative") as info:
            client.infer("guarded", [negative])
        assert info.value.status() == "400"
        text = metrics.get("/metrics").text

    for family in FAMILIES:
        assert f"# TYPE {family} counter" in text, family
    # As on Triton, the per-model cache families exist only for models that use the cache.
    assert "nv_cache_num_hits_per_model" not in text

    def model(name: str, family: str) -> float:
        return sample(text, family, model=name, version="1")

    assert model("classify_ensemble", "nv_inference_request_success") == 3
    assert model("classify_ensemble", "nv_inference_request_failure") == 0
    for member in ("preprocess", "classifier", "postprocess"):
        assert model(member, "nv_inference_request_success") == 3
        assert model(member, "nv_inference_count") == 3
        assert model(member, "nv_inference_exec_count") == 3
        assert model(member, "nv_inference_request_duration_us") > 0
        assert model(member, "nv_inference_compute_infer_duration_us") > 0
        assert model(member, "nv_inference_queue_duration_us") >= 0
        assert model(member, "nv_inference_queue_duration_us") <= model(member, "nv_inference_request_duration_us")
    assert model("guarded", "nv_inference_request_success") == 0
    assert model("guarded", "nv_inference_request_failure") == 1
    assert model("checker", "nv_inference_request_failure") == 1
    assert model("checker", "nv_inference_exec_count") == 1

    def step(pipeline: str, name: str, family: str) -> float:
        return sample(text, family, pipeline=pipeline, step=name)

    for name in ("preprocess", "classifier", "postprocess"):
        assert step("classify_ensemble", name, "dagserve_pipeline_step_success") == 3
        assert step("classify_ensemble", name, "dagserve_pipeline_step_failure") == 0
        assert step("classify_ensemble", name, "dagserve_pipeline_step_duration_us") > 0
    assert step("guarded", "check", "dagserve_pipeline_step_failure") == 1
    assert step("guarded", "check", "dagserve_pipeline_step_success") == 0
