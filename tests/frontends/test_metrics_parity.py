"""/metrics as Triton shows it: latency histograms and summaries only when --metrics-config
enables them, the cache families, CPU and GPU gauges, and models' own metrics from
pb_utils.MetricFamily, scraped from real servers after real tritonclient requests."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from dagserve.cli import _serve_options, build_parser
from dagserve.engine.latency import MetricsConfig
from dagserve.testing import RunningServer, serve_in_thread, wait_until

REPOS = Path(__file__).parents[1] / "repos"
METRICS = REPOS / "metrics"
PIPELINES = REPOS / "pipelines"


def scrape(running: RunningServer) -> str:
    return httpx.get(f"http://{running.metrics_url}/metrics", timeout=30).text


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels are exactly ``labels``."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) == labels:
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def infer(running: RunningServer, model: str, x: float) -> np.ndarray:
    with httpclient.InferenceServerClient(running.http_url) as client:
        tensor = httpclient.InferInput("X", [1], "FP32")
        tensor.set_data_from_numpy(np.array([x], np.float32))
        return client.infer(model, [tensor]).as_numpy("Y")  # type: ignore[no-any-return]


M = {"model": "custom", "version": "1"}


# -- models' own metrics ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_server() -> Iterator[RunningServer]:
    with serve_in_thread(METRICS, grpc=False, response_cache_bytes=1 << 20) as running:
        yield running


def test_a_models_counter_gauge_and_histogram_are_on_metrics(metrics_server: RunningServer) -> None:
    """The custom model's counter counts its requests (and value() reads it back), its gauge
    holds the last X, its histogram counts each X in Triton's cumulative le buckets."""
    answers = [float(infer(metrics_server, "custom", x)[0]) for x in (5, 50, 500)]
    assert answers == [1.0, 2.0, 3.0]
    text = scrape(metrics_server)
    assert "# HELP custom_requests Requests this model saw\n# TYPE custom_requests counter\n" in text
    assert "# TYPE custom_last_x gauge" in text and "# TYPE custom_x histogram" in text
    assert value(text, "custom_requests", **M) == 3
    assert value(text, "custom_last_x", **M) == 500
    assert [value(text, "custom_x_bucket", **M, le=le) for le in ("1", "10", "100", "+Inf")] == [0, 1, 2, 3]
    assert value(text, "custom_x_count", **M) == 3
    assert value(text, "custom_x_sum", **M) == 555


CASES = {
    "counter_negative": "TritonModelException: Failed to increment metric value: TRITONSERVER_METRIC_KIND_COUNTER "
                        "can only be incremented monotonically by non-negative values.",
    "counter_set": "TritonModelException: Failed to set metric value: TRITONSERVER_METRIC_KIND_COUNTER does not "
                   "support Set",
    "counter_observe": "TritonModelException: Failed to observe metric value: TRITONSERVER_METRIC_KIND_COUNTER does "
                       "not support Observe",
    "gauge_observe": "TritonModelException: Failed to observe metric value: TRITONSERVER_METRIC_KIND_GAUGE does not "
                     "support Observe",
    "histogram_value": "TritonModelException: Failed to get metric value: TRITONSERVER_METRIC_KIND_HISTOGRAM does not "
                       "support Value",
    "histogram_increment": "TritonModelException: Failed to increment metric value: "
                           "TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Increment",
    "histogram_no_buckets": "TritonModelException: Failed to create metric. Missing required buckets.",
    "counter_buckets": "TritonModelException: Failed to create metric. Unexpected buckets found.",
    "labels_not_dict": "TritonModelException: Failed to create metric. Labels must be a dictionary.",
    "label_not_string": "TritonModelException: Failed to create metric. The value of label 'a' must be a string, "
                        "not int",
    "kind_clash": "TritonModelException: Error when creating MetricFamily: metric family 'err_clash' already exists "
                  "with kind COUNTER, not GAUGE",
    "reserved_name": "TritonModelException: Error when creating MetricFamily: metric family name "
                     "'nv_inference_count' is reserved",
    "bad_name": "TritonModelException: Error when creating MetricFamily: Invalid metric name 'bad-name'",
    "family_deleted": "TritonModelException: Failed to set metric value: Invalid metric operation as the "
                      "corresponding 'MetricFamily' has been deleted.",
    "same_labels_same_metric": "ok 5.0",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_metric_operations_raise_tritons_errors(metrics_server: RunningServer, case: str) -> None:
    """Each misuse of the metric API raises TritonModelException with Triton's message inside
    the model (which answers with it); two Metric(labels) with the same labels share a value."""
    with httpclient.InferenceServerClient(metrics_server.http_url) as client:
        tensor = httpclient.InferInput("CASE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([case.encode()], dtype=object))
        message = client.infer("metric_errors", [tensor]).as_numpy("MESSAGE")[0].decode()
    assert message.startswith(CASES[case]), message


def test_a_models_metrics_leave_when_it_unloads() -> None:
    """Unloading the model that created a family removes it from /metrics (Triton's stub exits)."""
    with serve_in_thread(METRICS, grpc=False, model_control_mode="explicit", load_models=("custom",)) as running:
        infer(running, "custom", 2)
        assert value(scrape(running), "custom_requests", **M) == 1
        with httpclient.InferenceServerClient(running.http_url) as client:
            client.unload_model("custom")
            wait_until(lambda: "custom" not in [m["name"] for m in client.get_model_repository_index()
                                                if m.get("state") == "READY"], what="custom unloaded")
        wait_until(lambda: "custom_requests" not in scrape(running), what="custom_requests gone from /metrics")
        text = scrape(running)
        assert "custom_x" not in text and "custom_last_x" not in text


# -- latency histograms and summaries -----------------------------------------------------------
def test_histograms_and_summaries_are_off_by_default(metrics_server: RunningServer) -> None:
    """Triton's defaults: latency counters only, no histogram, no summary."""
    infer(metrics_server, "custom", 1)
    text = scrape(metrics_server)
    assert value(text, "nv_inference_request_duration_us", **M) > 0
    assert "histogram" not in "".join(line for line in text.splitlines() if line.startswith("# TYPE nv_"))
    assert "summary" not in "".join(line for line in text.splitlines() if line.startswith("# TYPE nv_"))


def test_histogram_latencies_count_every_first_response() -> None:
    """histogram_latencies=true: nv_inference_first_response_histogram_ms counts each request
    once in Triton's buckets (100, 500, 2000, 5000 ms), its sum in milliseconds below the
    request-duration counter; every pipeline step gets its own histogram."""
    config = MetricsConfig(histogram_latencies=True)
    with serve_in_thread(PIPELINES, grpc=False, metrics_config=config) as running:
        raw = httpclient.InferInput("RAW", [8], "UINT8")
        raw.set_data_from_numpy(np.arange(8, dtype=np.uint8))
        with httpclient.InferenceServerClient(running.http_url) as client:
            for _ in range(4):
                client.infer("classify_ensemble", [raw])
        text = scrape(running)
    p = {"model": "classify_ensemble", "version": "1"}
    assert "# TYPE nv_inference_first_response_histogram_ms histogram" in text
    assert value(text, "nv_inference_first_response_histogram_ms_count", **p) == 4
    buckets = [value(text, "nv_inference_first_response_histogram_ms_bucket", **p, le=le)
               for le in ("100", "500", "2000", "5000", "+Inf")]
    assert buckets == sorted(buckets) and buckets[-1] == 4 and buckets[-2] == 4  # 5 s: nothing is that slow
    total_ms = value(text, "nv_inference_first_response_histogram_ms_sum", **p)
    assert 0 < total_ms <= value(text, "nv_inference_request_duration_us", **p) / 1000 * 1.0001
    for step in ("preprocess", "classifier", "postprocess"):
        labels = {"pipeline": "classify_ensemble", "version": "1", "step": step, "model": step}
        assert value(text, "dagserve_pipeline_step_histogram_ms_count", **labels) == 4
        assert value(text, "dagserve_pipeline_step_histogram_ms_bucket", **labels, le="+Inf") == 4
    assert "summary" not in text


def test_summary_latencies_report_quantiles_count_and_sum() -> None:
    """summary_latencies=true with custom quantiles: each summary has those quantiles (in
    order, non-decreasing), a count of the requests and a sum equal to the matching counter;
    counter_latencies=false drops the duration counters but not the request counts."""
    config = MetricsConfig.parse(["summary_latencies=true", "summary_quantiles=0.5:0.05,0.9:0.01",
                                  "counter_latencies=false"])
    with serve_in_thread(METRICS, grpc=False, metrics_config=config) as running:
        for x in range(5):
            infer(running, "custom", x)
        text = scrape(running)
    assert value(text, "nv_inference_request_success", **M) == 5
    assert "nv_inference_request_duration_us" not in text and "nv_inference_queue_duration_us" not in text
    for family in ("nv_inference_request_summary_us", "nv_inference_queue_summary_us",
                   "nv_inference_compute_input_summary_us", "nv_inference_compute_infer_summary_us",
                   "nv_inference_compute_output_summary_us"):
        assert f"# TYPE {family} summary" in text
        assert value(text, family + "_count", **M) == 5
        quantiles = [line.split(",quantile=")[1] for line in text.splitlines() if line.startswith(family + "{")
                     and 'model="custom"' in line]
        assert [q.split("}")[0] for q in quantiles] == ['"0.5"', '"0.9"']
        median, p90 = value(text, family, **M, quantile="0.5"), value(text, family, **M, quantile="0.9")
        assert 0 <= median <= p90
    assert value(text, "nv_inference_request_summary_us", **M, quantile="0.9") > 0
    assert "nv_cache_hit_summary_per_model" not in text  # no model uses the cache here


def test_cache_families_only_for_cached_models() -> None:
    """With the response cache: per-model hit/miss counters and durations only for the model
    that enables it, the server-wide local-cache gauges (hits, misses, lookups, entries), and
    with summaries the cache hit/miss summaries but no request summary, as on Triton."""
    config = MetricsConfig(summary_latencies=True)
    with serve_in_thread(METRICS, grpc=False, response_cache_bytes=1 << 20, metrics_config=config) as running:
        for x in (1, 1, 2):
            assert float(infer(running, "cached", x)[0]) == 2 * x
        infer(running, "custom", 1)
        text = scrape(running)
    c = {"model": "cached", "version": "1"}
    assert value(text, "nv_cache_num_hits_per_model", **c) == 1
    assert value(text, "nv_cache_num_misses_per_model", **c) == 2
    assert value(text, "nv_cache_hit_duration_per_model", **c) > 0
    assert "nv_cache_num_hits_per_model{model=\"custom\"" not in text
    assert value(text, "nv_inference_request_success", **c) == 3
    assert value(text, "nv_inference_exec_count", **c) == 2
    assert value(text, "nv_cache_num_hits") == 1
    assert value(text, "nv_cache_num_misses") == 2
    assert value(text, "nv_cache_num_lookups") == 3
    assert value(text, "nv_cache_num_entries") == 2
    assert 0 < value(text, "nv_cache_util") < 1
    assert value(text, "nv_cache_hit_summary_per_model_count", **c) == 1
    assert value(text, "nv_cache_miss_summary_per_model_count", **c) == 2
    assert 'nv_inference_request_summary_us_count{model="cached"' not in text
    assert value(text, "nv_inference_request_summary_us_count", **M) == 1


# -- CPU and GPU -------------------------------------------------------------------------------
def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="CPU metrics read /proc (Linux)")
def test_cpu_gauges_come_from_proc() -> None:
    """nv_cpu_memory_total_bytes is /proc/meminfo's MemTotal; used is at most that;
    nv_cpu_utilization appears after a poll interval and lies in [0, 1]."""
    with serve_in_thread(None, http=False, grpc=False, metrics_interval_ms=20) as running:
        wait_until(lambda: "nv_cpu_utilization" in scrape(running), what="a CPU poll")
        text = scrape(running)
    assert value(text, "nv_cpu_memory_total_bytes") == _meminfo_total()
    assert 0 < value(text, "nv_cpu_memory_used_bytes") <= _meminfo_total()
    assert 0.0 <= value(text, "nv_cpu_utilization") <= 1.0
    assert "# TYPE nv_cpu_utilization gauge" in text


def test_cpu_and_gpu_gauges_can_be_turned_off() -> None:
    """--allow-cpu-metrics false and --allow-gpu-metrics false: no nv_cpu_* nor nv_gpu_*."""
    with serve_in_thread(None, http=False, grpc=False, allow_cpu_metrics=False, allow_gpu_metrics=False) as running:
        text = scrape(running)
    assert "nv_cpu_" not in text and "nv_gpu_" not in text


class FakeNvml(types.ModuleType):
    """pynvml with one GPU, for the mapping from NVML's units to Triton's."""

    def __init__(self, fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.fail_init = fail_init
        self.energy_mj = 5_000_000
        self.shut = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return "GPU-1234"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        return types.SimpleNamespace(gpu=37, memory=5)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return types.SimpleNamespace(total=80 << 30, used=3 << 30, free=77 << 30)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 123_456  # milliwatts

    def nvmlDeviceGetPowerManagementLimit(self, handle: str) -> int:
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        self.energy_mj += 1500  # millijoules since the driver loaded
        return self.energy_mj


def test_gpu_gauges_map_nvml_to_tritons_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per GPU (label gpu_uuid): utilization 0-1, memory in bytes, power in watts, energy in
    joules since the server started (NVML's millijoules from the first poll)."""
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with serve_in_thread(None, http=False, grpc=False, allow_cpu_metrics=False, metrics_interval_ms=20) as running:
        wait_until(lambda: value(scrape(running), "nv_energy_consumption", gpu_uuid="GPU-1234") > 0, what="2 polls")
        text = scrape(running)
    g = {"gpu_uuid": "GPU-1234"}
    assert value(text, "nv_gpu_utilization", **g) == 0.37
    assert value(text, "nv_gpu_memory_total_bytes", **g) == 80 << 30
    assert value(text, "nv_gpu_memory_used_bytes", **g) == 3 << 30
    assert value(text, "nv_gpu_power_usage", **g) == 123.456
    assert value(text, "nv_gpu_power_limit", **g) == 700
    assert value(text, "nv_energy_consumption", **g) % 1.5 == 0
    assert "# TYPE nv_energy_consumption counter" in text and "# TYPE nv_gpu_utilization gauge" in text
    assert nvml.shut


def test_gpu_families_are_absent_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML that cannot start (no driver) leaves the GPU families out; the endpoint still serves."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    with serve_in_thread(None, http=False, grpc=False, allow_cpu_metrics=False) as running:
        response = httpx.get(f"http://{running.metrics_url}/metrics", timeout=30)
    assert response.status_code == 200
    assert "nv_gpu_" not in response.text and "nv_energy" not in response.text


# -- load time and pinned memory ---------------------------------------------------------------
SLOW_MODEL = """
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(0.3)  # the load the gauge measures

    def execute(self, requests):
        raise NotImplementedError
"""


def test_model_load_duration_is_a_gauge_per_version(tmp_path: Path) -> None:
    """nv_model_load_duration_secs{model,version}: the seconds the version's last load took
    (a model whose initialize takes 0.3 s shows at least that); a reload sets it anew."""
    model = tmp_path / "slow"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(SLOW_MODEL)
    (model / "config.pbtxt").write_text(
        'backend: "python"\ninput [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n'
    )
    with serve_in_thread(tmp_path, grpc=False, model_control_mode="explicit", load_models=("slow",)) as running:
        text = scrape(running)
        first = value(text, "nv_model_load_duration_secs", model="slow", version="1")
        assert "# TYPE nv_model_load_duration_secs gauge" in text
        assert 0.3 <= first < 60
        (model / "1" / "model.py").write_text(SLOW_MODEL.replace("0.3", "0.5"))
        with httpclient.InferenceServerClient(running.http_url) as client:
            client.load_model("slow")
        assert value(scrape(running), "nv_model_load_duration_secs", model="slow", version="1") >= 0.5
        with httpclient.InferenceServerClient(running.http_url) as client:
            client.unload_model("slow")
        wait_until(lambda: "nv_model_load_duration_secs{" not in scrape(running), what="the unload")


def test_pinned_memory_gauges_are_zero_without_cuda(metrics_server: RunningServer) -> None:
    """nv_pinned_memory_pool_total_bytes / _used_bytes are always there, without labels, as on
    Triton; with no CUDA initialized in the process (this machine) dagserve holds none: 0."""
    text = scrape(metrics_server)
    assert "# TYPE nv_pinned_memory_pool_total_bytes gauge" in text
    assert value(text, "nv_pinned_memory_pool_total_bytes") == 0
    assert value(text, "nv_pinned_memory_pool_used_bytes") == 0


class FakeTorch(types.ModuleType):
    """A stand-in for torch with CUDA initialized, which this machine cannot run: it answers
    ``host_memory_stats()`` with the figures of one naming scheme or the other. The real one is
    checked on a GPU by tests/backends/test_gpu.py::test_pinned_memory_gauges_follow_torch."""

    def __init__(self, stats: dict[str, int]) -> None:
        super().__init__("torch")
        self.cuda = types.SimpleNamespace(is_initialized=lambda: True, host_memory_stats=lambda: stats)


@pytest.mark.parametrize(("stats", "expected"), [
    ({"allocated_bytes.current": 4096, "active_bytes.current": 1024}, (4096, 1024)),
    ({"reserved_bytes.current": 8192, "allocated_bytes.current": 2048}, (8192, 2048)),
])
def test_pinned_memory_reads_torchs_host_allocator(
    monkeypatch: pytest.MonkeyPatch, stats: dict[str, int], expected: tuple[int, int]
) -> None:
    """(total, used) from torch's caching host allocator, in both of torch's namings; never
    read from a torch that has not initialized CUDA, nor when torch is not imported."""
    from dagserve.frontends.metrics_system import pinned_memory

    monkeypatch.setitem(sys.modules, "torch", FakeTorch(stats))
    assert pinned_memory() == expected
    idle = FakeTorch(stats)
    idle.cuda.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "torch", idle)
    assert pinned_memory() == (0, 0)
    monkeypatch.delitem(sys.modules, "torch")
    assert pinned_memory() == (0, 0)


# -- model_metrics: histogram buckets per model --------------------------------------------------
PASS_THROUGH = "def infer(inputs):\n    return {'Y': inputs['X']}\n"
IO_PBTXT = ('backend: "python"\ninput [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
            'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n')
FIRST_RESPONSE_BUCKETS = """
model_metrics {
  metric_control: [
    { metric_identifier: { family: "nv_inference_first_response_histogram_ms" }
      histogram_options: { buckets: [ 1, 2, 4, 8 ] } }
  ]
}
"""
PIPELINE_YAML = """
backend: pipeline
inputs: [{name: X, datatype: FP32, shape: [1]}]
outputs: [{name: Y, datatype: FP32, shape: [1]}]
pipeline:
  steps: [{name: only, model: tuned, inputs: {X: X}}]
  outputs: {Y: only.Y}
model_metrics:
  metric_control:
    - metric_identifier: {family: nv_inference_first_response_histogram_ms}
      histogram_options: {buckets: [3, 30]}
    - metric_identifier: {family: dagserve_pipeline_step_histogram_ms}
      histogram_options: {buckets: [0.5, 50]}
"""


def _buckets(text: str, family: str, **labels: str) -> list[str]:
    found = []
    for line in text.splitlines():
        if line.startswith(family + "_bucket{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            found.append(re.search(r'le="([^"]+)"', line).group(1))  # type: ignore[union-attr]
    return found


def test_model_metrics_set_histogram_buckets_per_model(tmp_path: Path) -> None:
    """model_metrics in config.pbtxt sets one model's first-response buckets, leaving another
    model Triton's defaults; in a YAML pipeline it sets the pipeline's and its steps' buckets;
    every request lands in the +Inf bucket and in the buckets its time allows."""
    for name, config in (("tuned", IO_PBTXT + FIRST_RESPONSE_BUCKETS), ("plain", IO_PBTXT)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(PASS_THROUGH)
        (tmp_path / name / "config.pbtxt").write_text(config)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "config.yaml").write_text(PIPELINE_YAML)
    with serve_in_thread(tmp_path, grpc=False, metrics_config=MetricsConfig(histogram_latencies=True)) as running:
        for model in ("tuned", "plain", "pipe", "pipe"):
            infer(running, model, 1)
        text = scrape(running)
        with httpclient.InferenceServerClient(running.http_url) as client:
            shown = client.get_model_config("tuned")["model_metrics"]
    family = "nv_inference_first_response_histogram_ms"
    assert _buckets(text, family, model="tuned") == ["1", "2", "4", "8", "+Inf"]
    assert _buckets(text, family, model="plain") == ["100", "500", "2000", "5000", "+Inf"]
    assert _buckets(text, family, model="pipe") == ["3", "30", "+Inf"]
    step = {"pipeline": "pipe", "step": "only"}
    assert _buckets(text, "dagserve_pipeline_step_histogram_ms", **step) == ["0.5", "50", "+Inf"]
    assert value(text, family + "_bucket", model="tuned", version="1", le="+Inf") == 3  # its own and the pipeline's
    assert value(text, family + "_bucket", model="pipe", version="1", le="+Inf") == 2
    counts = [value(text, family + "_bucket", model="tuned", version="1", le=le) for le in ("1", "2", "4", "8")]
    assert counts == sorted(counts) and counts[-1] <= 3
    assert shown == {"metric_control": [{"metric_identifier": {"family": family},
                                         "histogram_options": {"buckets": [1.0, 2.0, 4.0, 8.0]}}]}


@pytest.mark.parametrize(("control", "message"), [
    ('{ metric_identifier: { family: "nv_inference_request_duration_us" } histogram_options: { buckets: [1] } }',
     "metric family 'nv_inference_request_duration_us' has no buckets to set"),
    ('{ metric_identifier: { family: "nv_inference_first_response_histogram" } histogram_options: { buckets: [1] } }',
     "did you mean 'nv_inference_first_response_histogram_ms'?"),
    ('{ histogram_options: { buckets: [1] } }', "metric control must specify 'metric_identifier'"),
    ('{ metric_identifier: { family: "" } histogram_options: { buckets: [1] } }',
     "metric identifier must specify non-empty 'family'"),
    ('{ metric_identifier: { family: "nv_inference_first_response_histogram_ms" } }',
     "metric control must specify 'histogram_options'"),
    ('{ metric_identifier: { family: "nv_inference_first_response_histogram_ms" } histogram_options: { } }',
     "histogram options must specify non-empty 'buckets'"),
    ('{ metric_identifier: { family: "nv_inference_first_response_histogram_ms" } histogram_options: { buckets: [5, 1] } }',
     "buckets must be strictly increasing: 5.0 is followed by 1.0"),
    ('{ metric_identifier: { family: "dagserve_pipeline_step_histogram_ms" } histogram_options: { buckets: [1] } }',
     "is measured per step of a pipeline, and this model is not one"),
])
def test_model_metrics_mistakes_fail_the_load_with_the_reason(tmp_path: Path, control: str, message: str) -> None:
    """A bad model_metrics fails that model's load with the file, the line and Triton's words
    (an unknown family, which Triton only warns about, too); the server serves the rest."""
    for name, config in (("bad", IO_PBTXT + f"model_metrics {{\n  metric_control: [ {control} ] }}\n"),
                         ("good", IO_PBTXT)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.py").write_text(PASS_THROUGH)
        (tmp_path / name / "config.pbtxt").write_text(config)
    with serve_in_thread(tmp_path, grpc=False) as running:
        with httpclient.InferenceServerClient(running.http_url) as client:
            index = {entry["name"]: entry for entry in client.get_model_repository_index()}
        assert float(infer(running, "good", 2)[0]) == 2
    assert index["bad"]["state"] == "UNAVAILABLE"
    assert message in index["bad"]["reason"]
    assert re.search(r"bad/config\.pbtxt:[45]: field 'model_metrics", index["bad"]["reason"])  # its line


# -- flags -------------------------------------------------------------------------------------
def test_metric_flags_reach_the_options(tmp_path: Path) -> None:
    """The Triton flags map to the options: --allow-metrics false disables the port,
    --metrics-config settings accumulate, --allow-*-metrics and --metrics-interval-ms pass."""
    args = build_parser().parse_args([
        "serve", "--model-repository", str(tmp_path), "--allow-metrics", "false", "--allow-gpu-metrics", "false",
        "--metrics-interval-ms", "250", "--metrics-config", "summary_latencies=true",
        "--metrics-config", "summary_quantiles=0.5:0.05", "--metrics-config", "histogram_latencies=true",
    ])
    options = _serve_options(args)
    assert options.metrics_port is None
    assert options.allow_gpu_metrics is False and options.allow_cpu_metrics is True
    assert options.metrics_interval_ms == 250
    assert options.server.metrics_config == MetricsConfig(summary_latencies=True, histogram_latencies=True,
                                                   summary_quantiles=((0.5, 0.05),))


@pytest.mark.parametrize(("setting", "message"), [
    ("nope=1", "unknown setting 'nope'"),
    ("summary_latencies", "format is <setting>=<value>"),
    ("summary_latencies=yes", "summary_latencies=yes: expected true or false"),
    ("summary_quantiles=0.5", "'0.5' is not <quantile>:<error>"),
])
def test_a_bad_metrics_config_stops_the_start(tmp_path: Path, setting: str, message: str) -> None:
    """dagserve serve refuses a malformed or unknown --metrics-config at once (exit 2), naming it."""
    result = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(tmp_path),
         "--metrics-config", setting, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_summary_quantiles_over_a_sliding_window() -> None:
    """A summary's quantiles are read over the last max_age seconds (observations older than
    that leave the window) while count and sum stay all-time; an empty window reads NaN."""
    from dagserve.engine.latency import Summary

    summary = Summary(((0.5, 0.05), (0.99, 0.001)), max_age=10, age_buckets=5)
    for v in range(1, 101):
        summary.observe(float(v), now=1000.0)
    snap = summary.snapshot(now=1001.0)
    assert snap["quantiles"] == [(0.5, 50), (0.99, 99)]
    assert snap["count"] == 100 and snap["sum"] == 5050
    summary.observe(12345.0, now=1011.0)
    assert summary.snapshot(now=1011.0)["quantiles"] == [(0.5, 12300.0), (0.99, 12300.0)]
    later = summary.snapshot(now=1030.0)
    assert all(math.isnan(v) for _, v in later["quantiles"]) and later["count"] == 101
