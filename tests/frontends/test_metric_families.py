"""Each metric family moves by exactly what a request did: failures, queue and compute
durations, execution count, and the per-pipeline-step counters (success, failure, skipped)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

PIPELINES = Path(__file__).parents[1] / "repos" / "pipelines"
# routed: a switch on params.mode runs double (mode=double) or triple, then the step 'flag'
# (model checker) runs only when the input X is over 100; checker crashes on values over 1000.


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(PIPELINES, grpc=False) as server:
        yield server


def scrape(running: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by family and label set."""
    text = httpx.get(f"http://{running.metrics_url}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def delta(before: dict, after: dict, family: str, **labels: str) -> float:  # type: ignore[type-arg]
    """How much the samples of ``family`` whose labels include ``labels`` grew (summed)."""
    wanted = set(labels.items())
    keys = [k for k in after if k[0] == family and wanted <= k[1]]
    assert keys, f"no sample of {family} with {labels}"
    return sum(after[k] - before.get(k, 0.0) for k in keys)


def call(running: RunningServer, x: float) -> None:
    with httpclient.InferenceServerClient(running.http_url) as client:
        tensor = httpclient.InferInput("X", [1], "FP32")
        tensor.set_data_from_numpy(np.array([x], np.float32))
        client.infer("routed", [tensor], parameters={"mode": "double"})


def test_a_skipped_step_counts_as_skipped(running: RunningServer) -> None:
    """X = 1 is not over 100, so 'flag' is skipped: pipeline and double succeed once, checker never runs."""
    before = scrape(running)
    call(running, 1)
    after = scrape(running)
    assert delta(before, after, "nv_inference_request_success", model="routed") == 1
    assert delta(before, after, "nv_inference_request_success", model="double") == 1
    assert delta(before, after, "nv_inference_exec_count", model="double") == 1
    assert delta(before, after, "nv_inference_count", model="double") == 1
    assert delta(before, after, "nv_inference_exec_count", model="checker") == 0
    assert delta(before, after, "dagserve_pipeline_step_skipped", pipeline="routed", step="flag") == 1
    assert delta(before, after, "dagserve_pipeline_step_success", pipeline="routed", step="flag") == 0
    assert delta(before, after, "dagserve_pipeline_step_success", pipeline="routed", step="double") == 1
    assert delta(before, after, "dagserve_pipeline_step_skipped", pipeline="routed", step="triple") == 1


def test_durations_grow_with_a_served_request(running: RunningServer) -> None:
    """A served request adds to the request, queue and compute durations of the model that ran it."""
    before = scrape(running)
    call(running, 200)  # over 100: flag runs (on 400, which checker passes)
    after = scrape(running)
    assert delta(before, after, "nv_inference_request_success", model="checker") == 1
    assert delta(before, after, "nv_inference_request_duration_us", model="checker") > 0
    assert delta(before, after, "nv_inference_queue_duration_us", model="checker") > 0
    assert delta(before, after, "nv_inference_compute_infer_duration_us", model="checker") > 0
    assert delta(before, after, "nv_inference_compute_input_duration_us", model="checker") >= 0
    assert delta(before, after, "nv_inference_compute_output_duration_us", model="checker") >= 0
    assert delta(before, after, "dagserve_pipeline_step_duration_us", pipeline="routed", step="flag") > 0
    assert delta(before, after, "dagserve_pipeline_step_queue_duration_us", pipeline="routed", step="flag") >= 0
    # The durations of models that did not run stay put.
    assert delta(before, after, "nv_inference_request_duration_us", model="triple") == 0


def test_a_failing_step_counts_as_failure_everywhere(running: RunningServer) -> None:
    """X = 600 runs flag on 1200, and checker crashes: one failure for checker, for the step and
    for the pipeline, no success added to any of them; double still succeeded."""
    before = scrape(running)
    with pytest.raises(InferenceServerException) as info:
        call(running, 600)
    assert info.value.status() == "500"
    after = scrape(running)
    assert delta(before, after, "nv_inference_request_failure", model="checker") == 1
    assert delta(before, after, "nv_inference_request_success", model="checker") == 0
    assert delta(before, after, "nv_inference_request_failure", model="routed") == 1
    assert delta(before, after, "nv_inference_request_success", model="routed") == 0
    assert delta(before, after, "dagserve_pipeline_step_failure", pipeline="routed", step="flag") == 1
    assert delta(before, after, "dagserve_pipeline_step_success", pipeline="routed", step="double") == 1
    assert delta(before, after, "nv_inference_request_failure", model="double") == 0
