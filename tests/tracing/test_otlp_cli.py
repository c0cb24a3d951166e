"""``dagserve serve --trace-config mode=opentelemetry ...`` exports the spans of traced
requests over OTLP/HTTP to a real receiver: a small HTTP server in the test that decodes the
export with opentelemetry-proto."""

from __future__ import annotations

import gzip
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

REPO = Path(__file__).parent.parent / "repos" / "triton_python"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver on a loopback port: every span it is sent, with the
    resource attributes of its batch."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Span]] = []
        self.paths: list[str] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                export = ExportTraceServiceRequest.FromString(body)
                with receiver.changed:
                    receiver.paths.append(self.path)
                    for resource_spans in export.resource_spans:
                        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            receiver.spans.extend((resource, span) for span in scope.spans)
                    receiver.changed.notify_all()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[dict[str, str], Span]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.spans) >= count, timeout), (
                f"{len(self.spans)} spans received, expected {count}"
            )
            return list(self.spans)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join()


def test_cli_exports_spans_to_an_otlp_receiver(receiver: Receiver) -> None:
    """Spans of a request sent with a traceparent reach the receiver at the configured URL
    path, in the client's trace, with the resource attributes given; the server stops
    cleanly afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO),
         "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1",
         "--trace-config", "mode=opentelemetry",
         "--trace-config", f"opentelemetry,url=127.0.0.1:{receiver.port}",
         "--trace-config", "opentelemetry,resource=service.name=trace-test",
         "--trace-config", "opentelemetry,bsp_schedule_delay=50",
         "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        address = ""
        for line in proc.stdout:
            match = re.search(r"HTTP service listening on http://(\S+)", line)
            if match:
                address = match.group(1)
                break
        assert address, f"the server exited (code {proc.poll()})"
        with httpclient.InferenceServerClient(address) as client:
            settings = client.get_trace_settings()
            assert settings["trace_mode"] == "opentelemetry" and settings["trace_level"] == ["TIMESTAMPS"]
            assert settings["url"] == f"127.0.0.1:{receiver.port}"
            inputs = []
            for name in ("INPUT0", "INPUT1"):
                tensor = httpclient.InferInput(name, [4], "FP32")
                tensor.set_data_from_numpy(np.ones(4, np.float32))
                inputs.append(tensor)
            client.infer("add_sub", inputs, headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
        spans = receiver.wait_for(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert set(receiver.paths) == {"/v1/traces"}
    by_name = {span.name: (resource, span) for resource, span in spans}
    assert set(by_name) == {"InferRequest", "add_sub", "compute"}
    resource, root = by_name["InferRequest"]
    assert resource["service.name"] == "trace-test"
    assert root.trace_id.hex() == TRACE_ID and root.parent_span_id.hex() == CLIENT_SPAN
    assert root.kind == Span.SPAN_KIND_SERVER
    model = by_name["add_sub"][1]
    assert model.parent_span_id == root.span_id
    attributes = {a.key: a.value for a in model.attributes}
    assert attributes["triton.model_name"].string_value == "add_sub"
    assert attributes["triton.model_version"].int_value == 1
    assert [e.name for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert by_name["compute"][1].parent_span_id == model.span_id


@pytest.mark.parametrize(("flag", "message"), [
    ("rate=often", "'often' is not a whole number"),
    ("level=LOUD", "invalid trace level 'LOUD'"),
    ("mode=jaeger", "invalid trace mode 'jaeger'"),
    ("triton,colour=red", "unknown triton setting 'colour'"),
    ("file=/tmp/x", "unknown global setting 'file'"),
    ("count=-5", "'count' must be a whole number in [-1, 2147483647]"),
])
def test_bad_trace_config_is_a_usage_error(flag: str, message: str) -> None:
    """A malformed --trace-config ends the start with status 2 and a message quoting it."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO),
         "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1", "--trace-config", flag],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
