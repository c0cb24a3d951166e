"""`dagserve serve` as a user runs it: ports reported, health and metrics up, clean SIGTERM stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).parent / "repos" / "triton_python"


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )


def read_addresses(proc: subprocess.Popen[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)|metrics served at http://(\S+)/metrics", line)
        if match:
            found[match.group(1) or "metrics"] = match.group(2) or match.group(3)
        if len(found) == 3:
            return found
    raise AssertionError(f"server exited before reporting its ports (code {proc.wait()})")


def test_port_zero_reports_ports_and_sigterm_stops_cleanly() -> None:
    proc = start("--model-repository", str(REPO), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    try:
        addresses = read_addresses(proc)
        assert all(not a.endswith(":0") for a in addresses.values())
        with urllib.request.urlopen(f"http://{addresses['HTTP']}/v2/health/ready", timeout=60) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://{addresses['metrics']}/metrics", timeout=60) as reply:
            assert b'nv_inference_count{model="add_sub",version="1"}' in reply.read()
        with socket.create_connection(tuple(addresses["gRPC"].rsplit(":", 1)), timeout=60):  # type: ignore[arg-type]
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "SIGTERM received, stopping" in out


def test_environment_variables_set_options() -> None:
    proc = start(env={"DAGSERVE_MODEL_REPOSITORY": str(REPO), "DAGSERVE_HTTP_PORT": "0",
                      "DAGSERVE_GRPC_PORT": "0", "DAGSERVE_METRICS_PORT": "0"})
    try:
        addresses = read_addresses(proc)
        with urllib.request.urlopen(f"http://{addresses['HTTP']}/v2/health/live", timeout=60) as reply:
            assert reply.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    proc = start("--model-repository", str(tmp_path / "nope"), "--http-port", "0", "--grpc-port", "0",
                 "--metrics-port", "0")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "is not a directory" in out and "Traceback" not in out


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start("--model-repository", str(REPO), "--http-port", str(port), "--grpc-port", "0",
                     "--metrics-port", "0")
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"HTTP port {port} on 127.0.0.1 is already in use" in out and "Traceback" not in out


@pytest.mark.parametrize("flag", ["--http-port=70000", "--strict-readiness=maybe"])
def test_bad_flags_are_refused(flag: str) -> None:
    proc = start("--model-repository", str(REPO), flag)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "error" in out


def test_explicit_mode_loads_only_the_named_models() -> None:
    proc = start("--model-repository", str(REPO), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                 "--model-control-mode", "explicit", env={"DAGSERVE_LOAD_MODEL": "add_sub,versioned"})
    try:
        addresses = read_addresses(proc)
        request = urllib.request.Request(f"http://{addresses['HTTP']}/v2/repository/index", data=b"{}")
        with urllib.request.urlopen(request, timeout=60) as reply:
            index = json.loads(reply.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    ready = sorted({e["name"] for e in index if e["state"] == "READY"})
    assert ready == ["add_sub", "versioned"]
