"""What ``dagserve serve`` tells a new user before anything is served: a busy port is named (with
the flag to change) before any model loads, ``--load-model`` outside explicit mode is refused,
an empty repository is warned about, every flag has help, and a bad port value says what a port
is. scripts/demo.sh talks only to the server it started, and every bench script answers --help."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).parent.parent
DEADLINE = 120.0  # seconds; generous, the machine is busy


def dagserve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagserve.cli", *argv],
        check=False, capture_output=True, text=True, timeout=DEADLINE, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port that something else listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def recording_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose one model leaves a marker file when it is loaded (imported)."""
    marker = tmp_path / "loaded"
    model = tmp_path / "repo" / "recorder"
    (model / "1").mkdir(parents=True)
    (model / "config.yaml").write_text(
        "backend: python\ninputs: [{name: X, datatype: FP32, shape: [-1]}]\n"
        "outputs: [{name: Y, datatype: FP32, shape: [-1]}]\n"
    )
    (model / "1" / "model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('loaded')\n\n"
        "def infer(inputs):\n    return {'Y': inputs['X']}\n"
    )
    return tmp_path / "repo", marker


PORTS = {"--http-port": "HTTP", "--grpc-port": "gRPC", "--metrics-port": "metrics"}


@pytest.mark.parametrize("flag", list(PORTS))
def test_a_busy_port_is_named_before_any_model_loads(
    flag: str, held_port: int, recording_repo: tuple[Path, Path]
) -> None:
    """A port another process listens on ends the start at once, exit status 1, with a message
    naming the service, the port and the flag to change; the repository's model is never loaded."""
    repo, marker = recording_repo
    ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", flag: str(held_port)}
    proc = dagserve("serve", "--model-repository", str(repo), *(x for kv in ports.items() for x in kv))
    assert proc.returncode == 1, proc.stderr
    assert (
        f"dagserve: {PORTS[flag]} port {held_port} on 127.0.0.1 is already in use (another dagserve or "
        "tritonserver?); stop what listens there"
    ) in proc.stderr, proc.stderr
    assert f"or choose another port with {flag} PORT (0 picks a free one" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "the model was loaded before the port was checked"


def test_one_port_for_two_services_is_refused(recording_repo: tuple[Path, Path]) -> None:
    """The same port for HTTP and gRPC is named as such, before loading."""
    repo, marker = recording_repo
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    proc = dagserve("serve", "--model-repository", str(repo), "--http-port", port, "--grpc-port", port,
                    "--metrics-port", "-1")
    assert proc.returncode == 1, proc.stderr
    assert f"dagserve: --grpc-port {port} is also given to --http-port; each service needs its own port" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_model_outside_explicit_mode_is_an_error(mode: str, recording_repo: tuple[Path, Path]) -> None:
    """As on Triton, --load-model (or DAGSERVE_LOAD_MODEL) without explicit mode exits 2 saying
    which mode is needed, instead of being silently ignored."""
    repo, marker = recording_repo
    ports = ("--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1")
    for argv, env in ((["--load-model", "recorder"], {}), ([], {"DAGSERVE_LOAD_MODEL": "recorder"})):
        proc = dagserve("serve", "--model-repository", str(repo), "--model-control-mode", mode, *ports, *argv, env=env)
        assert proc.returncode == 2, proc.stderr
        assert (
            "dagserve: --load-model (or DAGSERVE_LOAD_MODEL) requires --model-control-mode=explicit "
            f"(the mode is {mode}, which loads every model of the repository)"
        ) in proc.stderr, proc.stderr
    assert not marker.exists()


def test_an_unknown_load_model_gets_a_hint(recording_repo: tuple[Path, Path]) -> None:
    """A misspelt --load-model is named with the closest model of the repository."""
    repo, _ = recording_repo
    proc = dagserve("serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
                    "--load-model", "recordr", "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1")
    assert proc.returncode == 2, proc.stderr
    assert "--load-model names unknown models: 'recordr' (did you mean 'recorder'?)" in proc.stderr


def test_an_empty_repository_is_warned_about(tmp_path: Path) -> None:
    """Serving a repository with no model directory starts, with a warning saying what a model
    directory looks like."""
    repo = tmp_path / "models"
    repo.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--http-port", "0",
         "--grpc-port", "-1", "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + DEADLINE
        for line in proc.stdout:  # the server's own "listening" line says it started
            if line.startswith("HTTP service listening on") or time.monotonic() > deadline:
                break
        else:
            pytest.fail("the server ended before listening")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (
        f"dagserve: warning: model repository {repo} has no model directories; the server starts with no "
        f"models (expected {repo}/<model>/config.pbtxt or config.yaml"
    ) in err, err


def test_every_serve_flag_has_help() -> None:
    """`dagserve serve --help` describes every option, --log-level included."""
    from dagserve.cli import build_parser

    parser = build_parser()
    serve = next(a for a in parser._actions if a.dest == "command").choices["serve"]  # type: ignore[union-attr]
    silent = [a.option_strings for a in serve._actions if a.option_strings and not a.help]
    assert silent == []
    proc = dagserve("serve", "--help")
    assert proc.returncode == 0
    assert re.search(r"--log-level \{debug,info,warning,error\}\s+the least severe log messages shown", proc.stdout)


def test_a_bad_port_value_says_what_a_port_is() -> None:
    """`--http-port abc` names the flag and what a port may be, not the parser's function."""
    proc = dagserve("serve", "--model-repository", ".", "--http-port", "abc")
    assert proc.returncode == 2
    assert (
        "argument --http-port: expected a port number (0-65535; 0 picks a free port, -1 disables), got 'abc'"
        in proc.stderr
    ), proc.stderr
    assert "_port" not in proc.stderr
    proc = dagserve("serve", "--model-repository", ".", "--grpc-port", "70000")
    assert "argument --grpc-port: port 70000 is out of range" in proc.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")))
def test_bench_scripts_answer_help(script: str) -> None:
    """Every bench script prints its usage and description for --help and runs nothing."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        check=False, capture_output=True, text=True, timeout=DEADLINE, env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}")
    source = (ROOT / "bench" / script).read_text()
    first = re.search(r'"""(.+)', source)
    assert first is not None and first.group(1).strip().rstrip('"') in " ".join(proc.stdout.split())


# -- scripts/demo.sh -----------------------------------------------------------------------------
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _demo(port: int | str) -> subprocess.CompletedProcess[str]:
    """scripts/demo.sh --once with this checkout's dagserve (no install)."""
    launcher = Path(sys.executable).with_name("dagserve")
    env = {**os.environ, "DAGSERVE": str(launcher), "DAGSERVE_HTTP_PORT": str(port)}
    return subprocess.run([str(ROOT / "scripts" / "demo.sh"), "--once"], check=False, capture_output=True,
                          text=True, timeout=DEADLINE * 2, env=env)


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@needs_curl
def test_demo_does_not_talk_to_another_server_on_its_port() -> None:
    """With another HTTP server on the demo's port, the demo fails naming the port and sends
    that server no request (before, it posted every example to it and reported success)."""
    _Recorder.seen = []
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        port = other.server_address[1]
        proc = _demo(port)
    finally:
        other.shutdown()
        other.server_close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert f"HTTP port {port} on 127.0.0.1 is already in use" in output
    assert "demo: dagserve (pid " in output and "exited during startup" in output
    assert _Recorder.seen == []


@needs_curl
def test_demo_answers_from_the_server_it_started() -> None:
    """On a free port (0: whatever the server gets, read from its own listening line) the demo
    posts every example request and gets each model's answer."""
    proc = _demo(0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for request in sorted((ROOT / "examples" / "requests").glob("*.json")):
        assert f"== POST /v2/models/{request.stem}/infer" in proc.stdout
        assert f'"model_name":"{request.stem}"' in proc.stdout
