"""A traced request's call through the ``remote`` backend carries the trace on: the remote
server's spans hang under the calling model's span, over HTTP and gRPC."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dagserve import TraceConfig
from dagserve.testing import serve_in_thread

REMOTE_REPO = Path(__file__).parents[1] / "repos" / "remote"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def traced(exporter: InMemorySpanExporter) -> TraceConfig:
    return TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), rate=1, exporter=exporter)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_remote_call_continues_the_trace(tmp_path: Path, scheme: str) -> None:
    """The remote's InferRequest span is a child of the gateway's span of the remote model,
    in the client's trace."""
    near, far = InMemorySpanExporter(), InMemorySpanExporter()
    with serve_in_thread(REMOTE_REPO, metrics=False, trace=traced(far)) as remote:
        url = f"{scheme}://{remote.http_url if scheme == 'http' else remote.grpc_url}"
        (tmp_path / "recho").mkdir()
        (tmp_path / "recho" / "config.yaml").write_text(textwrap.dedent(f"""
            backend: remote
            remote: {{url: {url}, model_name: echo}}
            inputs: [{{name: X, datatype: FP32, shape: [-1]}}]
            outputs: [{{name: Y, datatype: FP32, shape: [-1]}}]
        """))
        with serve_in_thread(tmp_path, grpc=False, metrics=False, trace=traced(near)) as gateway:
            with httpclient.InferenceServerClient(gateway.http_url) as client:
                tensor = httpclient.InferInput("X", [3], "FP32")
                tensor.set_data_from_numpy(np.arange(3, dtype=np.float32))
                client.infer("recho", [tensor], headers={"traceparent": TRACEPARENT}, outputs=[
                    httpclient.InferRequestedOutput("Y")])
            gateway.server.tracing.flush()
        remote.server.tracing.flush()
    (calling,) = [s for s in near.get_finished_spans() if s.name == "recho"]
    (remote_root,) = [s for s in far.get_finished_spans() if s.name == "InferRequest"]
    assert remote_root.parent is not None
    assert remote_root.parent.span_id == calling.context.span_id
    assert format(remote_root.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert {s.name for s in far.get_finished_spans()} >= {"InferRequest", "echo", "compute"}
