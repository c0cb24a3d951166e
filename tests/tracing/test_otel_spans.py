"""OpenTelemetry spans of traced requests, read from the SDK's in-memory exporter: the tree
request -> model -> pipeline steps -> member models -> batch executions, the client's
``traceparent`` as the parent over HTTP and gRPC, sampling by rate and count, and errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import dagserve
from dagserve.frontends.tracing import request_trace
from dagserve.testing import RunningServer, serve_in_thread

PIPELINES = Path(__file__).parent.parent / "repos" / "pipelines"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def running(exporter: InMemorySpanExporter) -> Iterator[RunningServer]:
    trace = dagserve.TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), rate=1, exporter=exporter)
    with serve_in_thread(
        PIPELINES, metrics=False, model_control_mode="explicit", load_models=("classify_yaml",), trace=trace
    ) as running:
        yield running


def finished(running: RunningServer, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    running.server.tracing.flush()
    return list(exporter.get_finished_spans())


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(found, key=lambda s: s.start_time or 0)


def only(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, f"{len(named)} spans named {name!r}: {[s.name for s in spans]}"
    return named[0]


def check_pipeline_tree(spans: Sequence[ReadableSpan]) -> None:
    """The tree of one classify_yaml request, from its InferRequest root down."""
    root = only(spans, "InferRequest")
    assert root.parent is not None and format(root.parent.span_id, "016x") == CLIENT_SPAN
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert all(s.context.trace_id == root.context.trace_id for s in spans)
    (pipeline,) = children(spans, root)
    assert pipeline.name == "classify_yaml"
    assert pipeline.attributes is not None and pipeline.attributes["triton.model_name"] == "classify_yaml"
    assert pipeline.attributes["triton.model_version"] == 1
    assert pipeline.attributes["triton.request_id"] == "req-7"
    assert [e.name for e in pipeline.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    steps = children(spans, pipeline)
    assert [s.name for s in steps] == ["step preprocess", "step classifier", "step postprocess"]
    for step in steps:
        assert step.attributes is not None and step.attributes["dagserve.pipeline"] == "classify_yaml"
        (member,) = children(spans, step)
        assert member.name == step.attributes["dagserve.step.model"] == step.attributes["dagserve.step"]
        (compute,) = children(spans, member)
        assert compute.name == "compute"
        assert compute.attributes is not None and compute.attributes["dagserve.batch_size"] >= 1
        assert [e.name for e in compute.events] == ["COMPUTE_START", "COMPUTE_END"]
        assert step.start_time <= member.start_time <= compute.start_time  # type: ignore[operator]
        assert compute.end_time <= member.end_time <= step.end_time  # type: ignore[operator]
    assert len(spans) == 1 + 1 + 3 * 3


def raw_input(module: Any, text: bytes) -> Any:
    data = np.frombuffer(text, dtype=np.uint8)
    item = module.InferInput("RAW", list(data.shape), "UINT8")
    item.set_data_from_numpy(data)
    return item


def test_http_request_tree_continues_the_clients_trace(
    running: RunningServer, exporter: InMemorySpanExporter
) -> None:
    """Over HTTP with a W3C traceparent header, the request's spans form one tree under the
    client's span: InferRequest -> pipeline -> one span per step -> the member model -> its
    batch execution, with Triton's attributes and timestamps."""
    with httpclient.InferenceServerClient(running.http_url) as client:
        result = client.infer(
            "classify_yaml", [raw_input(httpclient, b"\x01\x05")], request_id="req-7",
            headers={"traceparent": TRACEPARENT},
        )
    assert result.as_numpy("LABEL") is not None
    check_pipeline_tree(finished(running, exporter))


def test_grpc_request_tree_continues_the_clients_trace(
    running: RunningServer, exporter: InMemorySpanExporter
) -> None:
    """Over gRPC the traceparent comes from the call's metadata; the tree is the same."""
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.infer(
            "classify_yaml", [raw_input(grpcclient, b"\x02\x07")], request_id="req-7",
            headers={"traceparent": TRACEPARENT},
        )
    spans = finished(running, exporter)
    check_pipeline_tree(spans)
    assert only(spans, "InferRequest").attributes == {"triton.model_name": "classify_yaml", "dagserve.protocol": "grpc"}


def test_rate_count_and_propagated_context(running: RunningServer, exporter: InMemorySpanExporter) -> None:
    """One request in trace_rate is traced while trace_count lasts; a request carrying a
    traceparent is traced whatever the rate and count; level OFF traces nothing."""
    with httpclient.InferenceServerClient(running.http_url) as client:

        def roots_after(count: int, headers: dict[str, str] | None = None) -> int:
            exporter.clear()
            for _ in range(count):
                client.infer("classify_yaml", [raw_input(httpclient, b"\x03")], headers=headers)
            return len([s for s in finished(running, exporter) if s.name == "InferRequest"])

        client.update_trace_settings(settings={"trace_rate": "3"})
        assert roots_after(6) == 2
        client.update_trace_settings(model_name="classify_yaml", settings={"trace_rate": "1", "trace_count": "2"})
        assert roots_after(5) == 2
        assert client.get_trace_settings(model_name="classify_yaml")["trace_count"] == "0"
        assert roots_after(2, {"traceparent": TRACEPARENT}) == 2
        client.update_trace_settings(model_name="classify_yaml", settings={"trace_level": ["OFF"]})
        assert roots_after(2, {"traceparent": TRACEPARENT}) == 0
        client.update_trace_settings(model_name="classify_yaml", settings={"trace_level": None, "trace_count": None, "trace_rate": None})
        assert roots_after(3) == 1  # the global rate of 3 again


BATCHED = {
    "max_batch_size": 8,
    # Two queued requests make the preferred batch at once; one alone would wait a minute.
    "dynamic_batching": {"preferred_batch_size": [2], "max_queue_delay_microseconds": 60_000_000},
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [2]}],
    "outputs": [{"name": "Y", "datatype": "FP32", "shape": [2]}],
}


def _fail(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise ValueError("no good")


@pytest.mark.anyio
async def test_batch_execution_span_per_request_and_errors() -> None:
    """Two traced requests served in one batch each get a compute span of that execution
    (batch size 2, two requests); a model's failure marks its spans as errors."""
    exporter = InMemorySpanExporter()
    trace = dagserve.TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), rate=1, exporter=exporter)
    async with dagserve.Server(trace=trace) as server:
        await server.add_model("double", lambda inputs: {"Y": inputs["X"] * 2}, BATCHED)
        await server.add_model("fails", _fail, {**BATCHED, "dynamic_batching": {}})

        async def one(i: int) -> None:
            with request_trace(server, "double", "http", ()):
                request = dagserve.InferRequest(inputs={"X": np.full((1, 2), i, np.float32)}, id=f"r{i}")
                await server.infer("double", "", request)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 1)
            tg.start_soon(one, 2)
        with pytest.raises(dagserve.ModelExecutionError), request_trace(server, "fails", "http", ()):
            await server.infer("fails", "", dagserve.InferRequest(inputs={"X": np.ones((1, 2), np.float32)}))
        await anyio.to_thread.run_sync(server.tracing.flush)
    spans = exporter.get_finished_spans()
    computes = [s for s in spans if s.name == "compute" and s.attributes and s.attributes["triton.model_name"] == "double"]
    assert len(computes) == 2
    for compute in computes:
        assert compute.attributes is not None
        assert (compute.attributes["dagserve.batch_size"], compute.attributes["dagserve.batch_requests"]) == (2, 2)
    parents = {c.parent.span_id for c in computes if c.parent is not None}
    requests = {s.attributes["triton.request_id"]: s for s in spans if s.name == "double" and s.attributes}
    assert parents == {requests["r1"].context.span_id, requests["r2"].context.span_id}
    failed = [s for s in spans if s.name in ("fails", "InferRequest", "compute") and s.status.status_code is StatusCode.ERROR]
    assert {s.name for s in failed} == {"fails", "InferRequest", "compute"}
    assert "no good" in (only(failed, "fails").status.description or "")


def test_missing_sdk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the OpenTelemetry SDK, opentelemetry mode fails at start with the extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    tracing = dagserve.Server(trace=dagserve.TraceConfig(mode="opentelemetry")).tracing
    with pytest.raises(dagserve.ConfigError, match=r"pip install dagserve\[otel\]"):
        tracing.open()


@pytest.mark.anyio
async def test_bls_call_joins_the_trace_under_the_execution() -> None:
    """A BLS call (sync ``exec`` from the model's thread) made while serving a traced request
    gets its spans under that execution's compute span, in the same trace."""
    exporter = InMemorySpanExporter()
    trace = dagserve.TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), rate=1, exporter=exporter)
    repo = Path(__file__).parent.parent / "repos" / "triton_python"
    async with dagserve.Server(repo, model_control_mode="explicit", load_models=("bls_caller", "add_sub"),
                               trace=trace) as server:
        with request_trace(server, "bls_caller", "grpc", ()):
            ones = np.ones(4, np.float32)
            await server.infer("bls_caller", "", dagserve.InferRequest(inputs={"A": ones, "B": ones}))
        await anyio.to_thread.run_sync(server.tracing.flush)
    spans = exporter.get_finished_spans()
    caller = only(spans, "bls_caller")
    (outer,) = children(spans, caller)
    assert outer.name == "compute"
    (callee,) = children(spans, outer)
    assert callee.name == "add_sub" and callee.context.trace_id == caller.context.trace_id
    assert [s.name for s in children(spans, callee)] == ["compute"]


def test_grpc_stream_requests_are_traced(running: RunningServer, exporter: InMemorySpanExporter) -> None:
    """Each request of a ModelStreamInfer stream is its own trace, under the stream's
    traceparent metadata."""
    import queue

    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result),
                            headers={"traceparent": TRACEPARENT})
        for i in range(2):
            client.async_stream_infer("classify_yaml", [raw_input(grpcclient, b"\x01\x02")], request_id=f"s{i}")
        for _ in range(2):
            assert not isinstance(answers.get(timeout=60), Exception)
        client.stop_stream()
    roots = [s for s in finished(running, exporter) if s.name == "InferRequest"]
    assert len(roots) == 2
    assert all(r.parent is not None and format(r.parent.span_id, "016x") == CLIENT_SPAN for r in roots)
