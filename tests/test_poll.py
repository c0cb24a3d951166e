"""Poll mode (``--model-control-mode poll --repository-poll-secs S``): what changes in the
repository on disk is served without losing a request, and a broken change keeps the old
version serving. Each test waits for the change by polling the repository index with a
generous deadline."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import RunningServer, serve_in_thread

DEADLINE = 60.0

MODEL_PY = '''
FACTOR = {factor}


class Model:
    def infer(self, inputs):
        return {{"Y": inputs["X"] * FACTOR}}
'''


def config(**extra: Any) -> str:
    return json.dumps({
        "backend": "python",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [1]}],
        **extra,
    })


def write_model(repo: Path, name: str, *, version: int = 1, factor: float = 2.0, **extra: Any) -> None:
    (repo / name / str(version)).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.yaml").write_text(config(**extra))
    (repo / name / str(version) / "model.py").write_text(MODEL_PY.format(factor=factor))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE} s waiting until {what}")
        time.sleep(0.05)


def index(running: RunningServer) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["name"], e["version"]): e for e in running.server.repository_index()}


def answer(client: httpclient.InferenceServerClient, model: str, value: float, version: str = "") -> float:
    x = httpclient.InferInput("X", [1], "FP32")
    x.set_data_from_numpy(np.array([value], dtype=np.float32))
    return float(client.infer(model, [x], model_version=version).as_numpy("Y")[0])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write_model(repo, "scaled")
    return repo


@pytest.fixture
def running(repo: Path) -> Iterator[RunningServer]:
    with serve_in_thread(repo, metrics=False, model_control_mode="poll", repository_poll_secs=0.1) as server:
        yield server


@pytest.fixture
def client(running: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(running.http_url) as c:
        yield c


def test_a_new_version_directory_is_served(running: RunningServer, repo: Path, client: Any) -> None:
    """Adding ``2/`` (version policy ``latest 1``) serves version 2 and retires version 1."""
    assert answer(client, "scaled", 1) == 2.0
    write_model(repo, "scaled", version=2, factor=3.0)
    wait_until(lambda: index(running).get(("scaled", "2"), {}).get("state") == "READY", "version 2 is ready")
    assert answer(client, "scaled", 1) == 3.0
    assert ("scaled", "1") not in index(running)


def test_a_changed_config_is_applied(running: RunningServer, repo: Path, client: Any) -> None:
    """Editing the config (two instances instead of one) reloads the model with it."""
    def counts() -> list[int]:
        return [g["count"] for g in client.get_model_config("scaled").get("instance_group", [])]

    assert counts() == [1]  # the group Triton's auto-complete fills for a Python model
    (repo / "scaled" / "config.yaml").write_text(config(instance_group=[{"count": 2, "kind": "KIND_CPU"}]))
    wait_until(lambda: counts() == [2], "the config is applied")
    assert answer(client, "scaled", 2) == 4.0


def test_a_replaced_model_file_is_applied(running: RunningServer, repo: Path, client: Any) -> None:
    """Rewriting the model file reloads the model with the new code."""
    (repo / "scaled" / "1" / "model.py").write_text(MODEL_PY.format(factor=10.0))
    wait_until(lambda: answer(client, "scaled", 1) == 10.0, "the new code answers")


def test_added_and_deleted_models(running: RunningServer, repo: Path, client: Any) -> None:
    """A new model directory is loaded; a deleted one is unloaded."""
    write_model(repo, "added", factor=4.0)
    wait_until(lambda: index(running).get(("added", "1"), {}).get("state") == "READY", "the new model is ready")
    assert answer(client, "added", 1) == 4.0
    shutil.rmtree(repo / "scaled")
    wait_until(lambda: "scaled" not in {n for n, _ in index(running)}, "the deleted model is gone")
    with pytest.raises(InferenceServerException, match="unknown model 'scaled'"):
        answer(client, "scaled", 1)
    assert answer(client, "added", 1) == 4.0


def test_a_broken_change_keeps_the_old_version_serving(running: RunningServer, repo: Path, client: Any) -> None:
    """A change that fails to load leaves the loaded version serving, with the reason in the
    index; fixing it is picked up."""
    model_py = repo / "scaled" / "1" / "model.py"
    model_py.write_text("def broken(:\n")
    wait_until(lambda: "SyntaxError" in index(running)[("scaled", "1")]["reason"], "the index shows the failure")
    assert index(running)[("scaled", "1")]["state"] == "READY"
    assert answer(client, "scaled", 1) == 2.0
    (repo / "scaled" / "config.yaml").write_text("backend: python\nnot_a_field: 1\n")
    wait_until(lambda: "not_a_field" in index(running)[("scaled", "1")]["reason"], "the config failure shows")
    assert answer(client, "scaled", 1) == 2.0
    write_model(repo, "scaled", factor=6.0)
    wait_until(lambda: answer(client, "scaled", 1) == 6.0, "the fixed model answers")
    assert not index(running)[("scaled", "1")]["reason"]


def test_changes_under_load_lose_no_request(running: RunningServer, repo: Path) -> None:
    """Eight clients keep sending while the model file changes five times: every request is
    answered, by one generation of the code or the next."""
    stop = threading.Event()
    failures: list[str] = []
    answered = [0] * 8

    def worker(i: int) -> None:
        with httpclient.InferenceServerClient(running.http_url, network_timeout=120) as c:
            while not stop.is_set():
                try:
                    got = answer(c, "scaled", 1)
                    assert got in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0), got
                    answered[i] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                    failures.append(str(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        with httpclient.InferenceServerClient(running.http_url) as c:
            for factor in (3.0, 4.0, 5.0, 6.0, 7.0):
                (repo / "scaled" / "1" / "model.py").write_text(MODEL_PY.format(factor=factor))
                wait_until(lambda f=factor: answer(c, "scaled", 1) == f, f"factor {factor} answers")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
    assert all(answered), answered


def test_load_and_unload_are_refused(running: RunningServer) -> None:
    """As on Triton, the load/unload API is refused in poll mode, over HTTP and gRPC."""
    with httpclient.InferenceServerClient(running.http_url) as c, \
            pytest.raises(InferenceServerException, match="not allowed if polling is enabled"):
        c.load_model("scaled")
    with grpcclient.InferenceServerClient(running.grpc_url) as g, \
            pytest.raises(InferenceServerException, match="not allowed if polling is enabled"):
        g.unload_model("scaled")


def test_cli_poll_flags(tmp_path: Path) -> None:
    """``dagserve serve --model-control-mode poll --repository-poll-secs`` polls; the poll
    interval also reads DAGSERVE_REPOSITORY_POLL_SECS; a non-positive interval is refused."""
    repo = tmp_path / "models"
    write_model(repo, "scaled")
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--http-port", "0",
         "--grpc-port", "-1", "--metrics-port", "-1", "--model-control-mode", "poll"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DAGSERVE_REPOSITORY_POLL_SECS": "0.2"},
    ) as proc:
        assert proc.stdout is not None
        drain = threading.Thread(target=lambda: lines.extend(proc.stdout or ()))
        try:
            url = ""
            for line in proc.stdout:
                lines.append(line)
                match = re.search(r"HTTP service listening on (?:http://)?(\S+)", line)
                if match:
                    url = match.group(1)
                    break
            assert url, "".join(lines)
            drain.start()
            write_model(repo, "added", factor=4.0)
            with httpclient.InferenceServerClient(url) as c:
                wait_until(lambda: c.is_model_ready("added"), "the added model is ready")
                assert answer(c, "added", 1) == 4.0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            if drain.is_alive():
                drain.join(timeout=60)
    assert proc.returncode == 0, "".join(lines)
    refused = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo),
         "--model-control-mode", "poll", "--repository-poll-secs", "0"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2 and "--repository-poll-secs must be a positive number" in refused.stderr


def test_a_pipeline_added_with_its_model(running: RunningServer, repo: Path, client: Any) -> None:
    """A pipeline and the new model it calls, added together, are both served (the model
    loads first); changing that model re-checks the pipeline, which keeps answering."""
    write_model(repo, "tripler", factor=3.0)
    (repo / "chain").mkdir()
    (repo / "chain" / "config.yaml").write_text(json.dumps({
        "backend": "pipeline",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [1]}],
        "pipeline": {
            "steps": [{"name": "a", "model": "scaled", "inputs": {"X": "X"}},
                      {"name": "b", "model": "tripler", "inputs": {"X": "a.Y"}}],
            "outputs": {"Y": "b.Y"},
        },
    }))
    wait_until(lambda: index(running).get(("chain", "1"), {}).get("state") == "READY", "the pipeline is ready")
    assert answer(client, "chain", 1) == 6.0
    (repo / "tripler" / "1" / "model.py").write_text(MODEL_PY.format(factor=5.0))
    wait_until(lambda: answer(client, "chain", 1) == 10.0, "the pipeline uses the changed model")
    assert index(running)[("chain", "1")]["state"] == "READY"
