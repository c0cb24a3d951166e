"""Restricted APIs (Triton's --http-restricted-api / --grpc-restricted-protocol) through the
real tritonclient and its ``headers=``: refused without the header or with a wrong value (403 /
PERMISSION_DENIED, Triton's message), served with it, other APIs left open."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.frontends.restricted import GRPC_HEADER_PREFIX, Restrictions, http_category
from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "triton_python"
RULES = ["model-repository,statistics,model-config:admin-key=s3cret", "inference:infer-key=abc"]
ADMIN_HTTP = {"admin-key": "s3cret"}
ADMIN_GRPC = {"triton-grpc-protocol-admin-key": "s3cret"}
INFER_HTTP = {"Infer-Key": "abc"}  # header names are case-insensitive
INFER_GRPC = {"triton-grpc-protocol-infer-key": "abc"}


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(
        REPO, metrics=False, model_control_mode="explicit", load_models=("add_sub",),
        http_restricted=Restrictions.parse(RULES),
        grpc_restricted=Restrictions.parse(RULES, header_prefix=GRPC_HEADER_PREFIX),
    ) as server:
        yield server


def inputs(module: Any) -> list[Any]:
    out = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, [4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
        out.append(tensor)
    return out


def refused(call: Any, status: str, header: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == status, info.value
    kind = "API" if status == "403" else "protocol"
    assert info.value.message() == f"This {kind} is restricted, expecting header '{header}'"


def test_http_restricted_apis(running: RunningServer) -> None:
    """HTTP: repository, statistics, config and inference need their header (403 otherwise,
    also for a wrong value); health and metadata stay open."""
    c = httpclient.InferenceServerClient(running.http_url)
    assert c.is_server_live() and c.is_model_ready("add_sub")
    assert c.get_model_metadata("add_sub")["name"] == "add_sub"
    for headers in (None, {"admin-key": "wrong"}, {"admin-key": "s3cret "}):
        refused(lambda h=headers: c.load_model("add_sub", headers=h), "403", "admin-key")
        refused(lambda h=headers: c.unload_model("add_sub", headers=h), "403", "admin-key")
        refused(lambda h=headers: c.get_model_repository_index(headers=h), "403", "admin-key")
        refused(lambda h=headers: c.get_inference_statistics("add_sub", headers=h), "403", "admin-key")
        refused(lambda h=headers: c.get_model_config("add_sub", headers=h), "403", "admin-key")
    refused(lambda: c.infer("add_sub", inputs(httpclient)), "403", "infer-key")
    refused(lambda: c.infer("add_sub", inputs(httpclient), headers={"infer-key": "ab"}), "403", "infer-key")
    refused(lambda: c.infer("add_sub", inputs(httpclient), headers=ADMIN_HTTP), "403", "infer-key")

    c.load_model("add_sub", headers=ADMIN_HTTP)
    assert c.get_model_config("add_sub", headers=ADMIN_HTTP)["name"] == "add_sub"
    assert c.get_inference_statistics("add_sub", headers=ADMIN_HTTP)["model_stats"]
    assert any(m["name"] == "add_sub" for m in c.get_model_repository_index(headers=ADMIN_HTTP))
    result = c.infer("add_sub", inputs(httpclient), headers=INFER_HTTP)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.arange(4, dtype=np.float32) * 2)


def test_grpc_restricted_protocols(running: RunningServer) -> None:
    """gRPC: the same APIs need metadata triton-grpc-protocol-<key> (PERMISSION_DENIED
    otherwise); the unprefixed header does not count; health and metadata stay open."""
    c = grpcclient.InferenceServerClient(running.grpc_url)
    assert c.is_server_live() and c.is_model_ready("add_sub")
    assert c.get_model_metadata("add_sub").name == "add_sub"
    denied = "StatusCode.PERMISSION_DENIED"
    header = "triton-grpc-protocol-admin-key"
    for headers in (None, {"admin-key": "s3cret"}, {header: "wrong"}):
        refused(lambda h=headers: c.load_model("add_sub", headers=h), denied, header)
        refused(lambda h=headers: c.unload_model("add_sub", headers=h), denied, header)
        refused(lambda h=headers: c.get_model_repository_index(headers=h), denied, header)
        refused(lambda h=headers: c.get_inference_statistics("add_sub", headers=h), denied, header)
        refused(lambda h=headers: c.get_model_config("add_sub", headers=h), denied, header)
    refused(lambda: c.infer("add_sub", inputs(grpcclient)), denied, "triton-grpc-protocol-infer-key")

    c.load_model("add_sub", headers=ADMIN_GRPC)
    assert c.get_model_config("add_sub", headers=ADMIN_GRPC).config.name == "add_sub"
    assert c.get_inference_statistics("add_sub", headers=ADMIN_GRPC).model_stats
    result = c.infer("add_sub", inputs(grpcclient), headers=INFER_GRPC)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros(4, dtype=np.float32))


@pytest.mark.parametrize("headers", [None, INFER_GRPC])
def test_grpc_stream_inference_is_restricted(running: RunningServer, headers: dict[str, str] | None) -> None:
    """ModelStreamInfer is inference too: refused without the metadata, served with it."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c = grpcclient.InferenceServerClient(running.grpc_url)
    c.start_stream(callback=lambda result, error: results.put((result, error)), headers=headers)
    try:
        try:
            c.async_stream_infer("add_sub", inputs(grpcclient))
        except InferenceServerException:
            assert headers is None  # the stream was refused before the request could go out
        result, error = results.get(timeout=60)
    finally:
        c.stop_stream()
    if headers is None:
        assert error is not None and "PERMISSION_DENIED" in str(error.status())
        assert "expecting header 'triton-grpc-protocol-infer-key'" in error.message()
    else:
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.arange(4, dtype=np.float32) * 2)


def test_everything_open_by_default() -> None:
    """Without restrictions (the default, as Triton) no header is needed anywhere."""
    with serve_in_thread(REPO, metrics=False, model_control_mode="explicit", load_models=("add_sub",)) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        http.load_model("add_sub")
        assert http.get_inference_statistics("add_sub")["model_stats"]
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        grpc.load_model("add_sub")
        assert grpc.infer("add_sub", inputs(grpcclient)).as_numpy("OUTPUT0") is not None


@pytest.mark.parametrize(("method", "path", "category"), [
    ("GET", "/v2/health/live", "health"),
    ("GET", "/v2/models/m/versions/2/ready", "health"),
    ("GET", "/v2", "metadata"),
    ("GET", "/v2/models/m", "metadata"),
    ("GET", "/v2/models/m/versions/1", "metadata"),
    ("GET", "/v2/models/m/config", "model-config"),
    ("GET", "/v2/models/stats", "statistics"),
    ("GET", "/v2/models/m/versions/1/stats", "statistics"),
    ("POST", "/v2/models/m/infer", "inference"),
    ("POST", "/v2/models/m/versions/3/generate_stream", "inference"),
    ("POST", "/v2/repository/index", "model-repository"),
    ("POST", "/v2/repository/models/m/load", "model-repository"),
    ("POST", "/v2/systemsharedmemory/status", "shared-memory"),
    ("POST", "/v2/trace/setting", "trace"),
    ("POST", "/v2/logging", "logging"),
    ("GET", "/metrics", None),
])
def test_http_categories(method: str, path: str, category: str | None) -> None:
    """Each HTTP route belongs to Triton's category."""
    assert http_category(method, path) == category


@pytest.mark.parametrize(("value", "message"), [
    ("inference", "expected"),
    ("inference:key", "expected"),
    (":k=v", "expected"),
    ("bogus:k=v", "unknown API 'bogus'"),
])
def test_parse_errors(value: str, message: str) -> None:
    """Malformed values and unknown APIs are refused, naming the flag."""
    with pytest.raises(ValueError, match=message):
        Restrictions.parse([value], flag="--http-restricted-api")


def test_cli_refuses_an_api_in_two_groups_and_reads_env() -> None:
    """An API named twice is a usage error (exit 2, Triton's message); the environment variable
    (';'-separated) sets restrictions like the flag."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO),
         "--http-restricted-api", "health:a=1", "--http-restricted-api", "health,inference:b=2"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "API 'health' can not be specified in multiple config groups" in proc.stderr
    from dagserve.cli import build_parser
    from dagserve.cli_security import serve_options

    env = {"DAGSERVE_GRPC_RESTRICTED_PROTOCOL": "health:a=1;inference,statistics:b=2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        args = build_parser().parse_args(["serve", "--model-repository", "."])
        rules = serve_options(args)["grpc_restricted"].rules
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    assert rules == {"health": ("triton-grpc-protocol-a", "1"), "inference": ("triton-grpc-protocol-b", "2"),
                     "statistics": ("triton-grpc-protocol-b", "2")}
