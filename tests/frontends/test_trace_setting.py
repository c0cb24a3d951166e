"""Triton's trace extension with the stock tritonclient, over HTTP and gRPC: reading and
changing the global and per-model settings, clearing a model's setting back to the global one,
and clear errors for bad values."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve import TraceConfig
from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "triton_python"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningServer]:
    trace = TraceConfig(file=str(tmp_path / "trace.json"), rate=1000)
    with serve_in_thread(REPO, metrics=False, trace=trace) as running:
        yield running


class Settings:
    """One protocol's client, answering settings as plain dicts of lists/strings."""

    def __init__(self, protocol: str, running: RunningServer) -> None:
        self.protocol = protocol
        if protocol == "http":
            self.client: Any = httpclient.InferenceServerClient(running.http_url)
        else:
            self.client = grpcclient.InferenceServerClient(running.grpc_url)

    def _plain(self, answer: Any) -> dict[str, Any]:
        if self.protocol == "http":
            return dict(answer)
        # gRPC: {"settings": {name: {"value": [...]}}}; a single value reads as on HTTP.
        values = {k: v.get("value", []) for k, v in answer["settings"].items()}
        return {k: (v if k == "trace_level" else (v[0] if v else "")) for k, v in values.items()}

    def get(self, model: str = "") -> dict[str, Any]:
        if self.protocol == "http":
            return self._plain(self.client.get_trace_settings(model_name=model or None))
        return self._plain(self.client.get_trace_settings(model_name=model or None, as_json=True))

    def update(self, settings: dict[str, Any], model: str = "") -> dict[str, Any]:
        if self.protocol == "http":
            return self._plain(self.client.update_trace_settings(model_name=model or None, settings=settings))
        return self._plain(
            self.client.update_trace_settings(model_name=model or None, settings=settings, as_json=True)
        )

    def close(self) -> None:
        self.client.close()


@pytest.fixture(params=["http", "grpc"])
def settings(request: pytest.FixtureRequest, running: RunningServer) -> Iterator[Settings]:
    client = Settings(request.param, running)
    try:
        yield client
    finally:
        client.close()


def test_defaults_are_tritons(settings: Settings, tmp_path: Path) -> None:
    """The global settings read as Triton reports them: level OFF, rate, count, log frequency,
    the trace file and the mode; a model without its own setting shows the global one."""
    expected = {
        "trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
        "trace_file": str(tmp_path / "trace.json"), "trace_mode": "triton",
    }
    assert settings.get() == expected
    assert settings.get("add_sub") == expected


def test_model_setting_overrides_then_clears_back_to_global(settings: Settings) -> None:
    """A model's setting keeps what it was given, follows the global setting for the rest
    (also after the global one changes), and clearing its fields gives it back the global
    values; the global setting is untouched by model updates."""
    updated = settings.update({"trace_level": ["TIMESTAMPS"], "trace_rate": "5"}, model="add_sub")
    assert updated["trace_level"] == ["TIMESTAMPS"] and updated["trace_rate"] == "5"
    assert settings.get()["trace_level"] == ["OFF"]
    assert settings.get()["trace_rate"] == "1000"

    settings.update({"trace_count": "7", "log_frequency": "3"})
    model = settings.get("add_sub")
    assert (model["trace_rate"], model["trace_count"], model["log_frequency"]) == ("5", "7", "3")

    cleared = settings.update({"trace_rate": None}, model="add_sub")
    assert cleared["trace_rate"] == "1000" and cleared["trace_level"] == ["TIMESTAMPS"]
    settings.update({"trace_level": None}, model="add_sub")
    assert settings.get("add_sub") == settings.get()


def test_global_clear_returns_to_the_startup_value(settings: Settings) -> None:
    """Clearing a global setting goes back to the value the server started with."""
    assert settings.update({"trace_rate": "10", "trace_level": ["TIMESTAMPS", "TENSORS"]})["trace_rate"] == "10"
    assert settings.get()["trace_level"] == ["TIMESTAMPS", "TENSORS"]
    back = settings.update({"trace_rate": None, "trace_level": None})
    assert back["trace_rate"] == "1000" and back["trace_level"] == ["OFF"]


def _error(settings: Settings, changes: dict[str, Any], model: str = "") -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        settings.update(changes, model=model)
    return info.value


@pytest.mark.parametrize(("changes", "message"), [
    ({"trace_rate": "fast"}, "Unable to parse 'trace_rate', got: fast"),
    ({"trace_count": "-2"}, "out of range [ -1, 2147483647 ], got: -2"),
    ({"log_frequency": "-1"}, "Unable to parse 'log_frequency'"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "Expect only one trace level 'OFF'"),
    ({"trace_level": ["LOUD"]}, "invalid trace_level 'LOUD'"),
    ({"trace_level": ["TIMESTAMPS"], "trace_rate": "0"}, "sample rate must be non-zero"),
    ({"trace_mode": "opentelemetry"}, "cannot be changed at run time"),
    ({"trace_colour": "red"}, "unknown trace setting 'trace_colour'"),
])
def test_bad_values_are_invalid_argument(settings: Settings, changes: dict[str, Any], message: str) -> None:
    """A value that does not parse, is out of range, or would make a setting that cannot
    trace is refused with 400 / INVALID_ARGUMENT naming the problem; nothing changes."""
    before = settings.get()
    error = _error(settings, changes)
    assert message in error.message()
    assert error.status() == ("400" if settings.protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    assert settings.get() == before


def test_trace_file_and_unknown_model(settings: Settings) -> None:
    """The trace file cannot be changed over the network (UNSUPPORTED, as on Triton), and a
    setting for a model that is not served is refused with Triton's message."""
    error = _error(settings, {"trace_file": "/tmp/elsewhere.json"})
    assert "trace file location can not be updated through network protocol" in error.message()
    assert error.status() == ("501" if settings.protocol == "http" else "StatusCode.UNIMPLEMENTED")
    error = _error(settings, {"trace_rate": "1"}, model="no_such_model")
    assert "Request for unknown model : no_such_model" in error.message()


def test_triton_mode_needs_a_trace_file() -> None:
    """In triton mode without a trace file, turning tracing on is refused (Triton's rule):
    the traces would have nowhere to go."""
    with serve_in_thread(REPO, grpc=False, metrics=False) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        with pytest.raises(InferenceServerException, match="trace file name is not given"):
            client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        assert client.update_trace_settings(settings={"trace_rate": "3"})["trace_rate"] == "3"


def test_http_wire_details(running: RunningServer) -> None:
    """Over plain HTTP: an empty POST reads the settings, a non-string value is refused with
    400, and the server lists the trace extension."""
    base = f"http://{running.http_url}"

    def post(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(base + path, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, answer = post("/v2/trace/setting", b"")
    assert status == 200 and answer["trace_rate"] == "1000"
    status, answer = post("/v2/models/add_sub/trace/setting", b'{"trace_rate": {"a": 1}}')
    assert status == 400 and "trace setting 'trace_rate' must be a string" in answer["error"]
    with urllib.request.urlopen(base + "/v2", timeout=60) as reply:
        assert "trace" in json.loads(reply.read())["extensions"]
