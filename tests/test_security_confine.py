"""Confinement: nothing outside the model repository is imported, whatever a client names.

A canary model lives outside the repository (in ``tmp_path``); importing its ``model.py``
writes a marker file. Every refused path asserts the marker is absent, and a control test with
``allow_symlinks_outside_repository`` proves the canary does fire when it is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve import errors
from dagserve.engine import Server, ServerOptions
from dagserve.repository.confine import check_file_name, check_model_name, inside
from dagserve.testing import serve_in_thread

ADD_SUB = Path(__file__).parent / "repos" / "triton_python" / "add_sub"

CANARY_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

CANARY_MODEL = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

class TritonPythonModel:
    def execute(self, requests):
        return []
"""


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """``repo/`` with add_sub, ``outside/evil/`` (a canary model), ``outside/evil.py`` (a canary file)."""
    marker = tmp_path / "marker"
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ADD_SUB, repo / "add_sub")
    evil = tmp_path / "outside" / "evil"
    (evil / "1").mkdir(parents=True)
    (evil / "config.pbtxt").write_text(CANARY_CONFIG)
    (evil / "1" / "model.py").write_text(CANARY_MODEL.format(marker=str(marker)))
    (tmp_path / "outside" / "evil.py").write_text(CANARY_MODEL.format(marker=str(marker)))
    return {"repo": repo, "evil": evil, "marker": marker, "outside": tmp_path / "outside"}


# -- the checks themselves ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "a/b", "/etc", "..", ".", "", "a\x00b", "a\nb", "a\\b", "x" * 300])
def test_bad_model_names_are_invalid_input(name: str) -> None:
    """Every malformed model name raises InvalidInputError (a 400) naming the field."""
    with pytest.raises(errors.InvalidInputError, match="model name"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["add_sub", "my-model.v2", "résumé", "a..b"])
def test_plain_model_names_pass(name: str) -> None:
    """Ordinary names, including dots inside a name, are accepted unchanged."""
    assert check_model_name(name) == name


@pytest.mark.parametrize("value", ["../../evil.py", "/etc/passwd", "a/../../b", "./x", "a\\b", "C:x", ""])
def test_bad_file_names_are_refused(value: str) -> None:
    """File names from configs or file: overrides cannot climb out or be absolute."""
    with pytest.raises(errors.InvalidInputError, match="default_model_filename"):
        check_file_name(value, field="default_model_filename")


def test_plain_file_name_refuses_subdirectory() -> None:
    """``plain=True`` (default_model_filename) allows one file name only."""
    assert str(check_file_name("sub/x.bin", field="f")) == "sub/x.bin"
    with pytest.raises(errors.InvalidInputError, match="without a directory"):
        check_file_name("sub/x.py", field="f", plain=True)


def test_inside_follows_symlinks(tmp_path: Path) -> None:
    """A symlink leading out of the base is refused unless allowed; '..' is refused always."""
    (tmp_path / "base").mkdir()
    (tmp_path / "out.txt").write_text("x")
    (tmp_path / "base" / "link").symlink_to(tmp_path / "out.txt")
    with pytest.raises(errors.InvalidInputError, match="allow-symlinks-outside-repository"):
        inside(tmp_path / "base", Path("link"))
    assert inside(tmp_path / "base", Path("link"), allow_symlinks_outside=True) == tmp_path / "base" / "link"
    with pytest.raises(errors.InvalidInputError, match="outside"):
        inside(tmp_path / "base", Path("../out.txt"), allow_symlinks_outside=True)


# -- through the wire --------------------------------------------------------------------------
def _http_status(url: str, body: bytes = b"{}") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_load_traversal_is_refused(layout: dict[str, Path]) -> None:
    """HTTP repository load of '../outside/evil' or an absolute path (encoded slashes) is a 4xx
    and imports nothing."""
    with serve_in_thread(layout["repo"], grpc=False, metrics=False, model_control_mode="explicit") as running:
        base = f"http://{running.http_url}/v2/repository/models"
        for name in ("..%2Foutside%2Fevil", "%2E%2E%2Foutside%2Fevil", "%2F" + str(layout["evil"]).lstrip("/").replace("/", "%2F")):
            status, text = _http_status(f"{base}/{name}/load")
            assert 400 <= status < 500, (name, status, text)
        status, text = _http_status(f"{base}/..%2Foutside%2Fevil/unload")
        assert 400 <= status < 500, text
    assert not layout["marker"].exists()


def test_grpc_load_traversal_is_invalid_argument(layout: dict[str, Path]) -> None:
    """gRPC RepositoryModelLoad of '../outside/evil' or an absolute path is INVALID_ARGUMENT
    naming the model name, and imports nothing."""
    with serve_in_thread(layout["repo"], http=False, metrics=False, model_control_mode="explicit") as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        for name in ("../outside/evil", str(layout["evil"]), "..", "add_sub/../../outside/evil"):
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (name, info.value)
            assert "model name" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("../outside/evil")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        # A bad name in an inference call is a 400-class error too, not a crash.
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("../outside/evil")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert client.is_server_live()
    assert not layout["marker"].exists()


def test_symlinked_model_dir_is_refused_everywhere(layout: dict[str, Path]) -> None:
    """A model directory that is a symlink out of the repository fails at start-up (the other
    models serve) and on explicit load (HTTP 400, gRPC INVALID_ARGUMENT); nothing is imported."""
    (layout["repo"] / "link").symlink_to(layout["evil"])
    with serve_in_thread(layout["repo"], metrics=False) as running:
        index = {m["name"]: m for m in running.server.repository_index()}
        assert index["add_sub"]["state"] == "READY"
        assert index["link"]["state"] == "UNAVAILABLE"
        assert "outside" in index["link"]["reason"]
    with serve_in_thread(layout["repo"], metrics=False, model_control_mode="explicit") as running:
        http = httpclient.InferenceServerClient(running.http_url)
        with pytest.raises(InferenceServerException) as info:
            http.load_model("link")
        assert info.value.status() == "400"
        assert "allow-symlinks-outside-repository" in info.value.message()
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        with pytest.raises(InferenceServerException) as info:
            grpc.load_model("link")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        http.load_model("add_sub")  # the server is unharmed
        assert http.is_model_ready("add_sub")
    assert not layout["marker"].exists()


def test_symlinked_model_file_is_refused(layout: dict[str, Path]) -> None:
    """A model.py inside the repository that is a symlink to a file outside is refused."""
    version = layout["repo"] / "add_sub" / "1"
    (version / "model.py").unlink()
    (version / "model.py").symlink_to(layout["outside"] / "evil.py")
    with serve_in_thread(layout["repo"], grpc=False, metrics=False, model_control_mode="explicit") as running:
        http = httpclient.InferenceServerClient(running.http_url)
        with pytest.raises(InferenceServerException) as info:
            http.load_model("add_sub")
        assert info.value.status() == "400"
        assert "1/model.py is a symlink" in info.value.message()
    assert not layout["marker"].exists()


def test_allow_flag_lets_the_canary_load(layout: dict[str, Path]) -> None:
    """Control: with allow_symlinks_outside_repository the symlinked model loads and the canary
    fires, so the refusals above are what kept it quiet."""
    (layout["repo"] / "link").symlink_to(layout["evil"])
    with serve_in_thread(layout["repo"], grpc=False, metrics=False, model_control_mode="explicit",
                         allow_symlinks_outside_repository=True) as running:
        httpclient.InferenceServerClient(running.http_url).load_model("link")
    assert layout["marker"].read_text() == "imported"


@pytest.mark.parametrize("filename", ["../../outside/evil.py", "../evil.py", "/etc/passwd", "sub/model.py"])
def test_default_model_filename_override_is_refused(layout: dict[str, Path], filename: str) -> None:
    """A load whose config override sets default_model_filename outside the version directory
    is 400 / INVALID_ARGUMENT naming the field; the loaded model keeps serving."""
    config = json.dumps({
        "backend": "python", "max_batch_size": 0, "default_model_filename": filename,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                  {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                   {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [4]}],
    })
    with serve_in_thread(layout["repo"], metrics=False, model_control_mode="explicit",
                         load_models=("add_sub",)) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        with pytest.raises(InferenceServerException) as info:
            http.load_model("add_sub", config=config)
        assert info.value.status() == "400"
        assert "default_model_filename" in info.value.message()
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        with pytest.raises(InferenceServerException) as info:
            grpc.load_model("add_sub", config=config)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "default_model_filename" in info.value.message()
        assert http.is_model_ready("add_sub")
    assert not layout["marker"].exists()


def test_cli_load_model_traversal_is_refused(layout: dict[str, Path]) -> None:
    """`dagserve serve --load-model ../outside/evil` exits 2 with a one-line error; nothing is
    imported."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(layout["repo"]),
         "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1",
         "--model-control-mode", "explicit", "--load-model", "../outside/evil"],
        check=False, capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert proc.returncode == 2, proc.stderr
    assert "--load-model" in proc.stderr and "path separator" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not layout["marker"].exists()


@pytest.mark.anyio
async def test_bls_and_pipeline_member_names_are_checked(layout: dict[str, Path]) -> None:
    """A BLS or pipeline call naming '../x' is InvalidInputError (400), not a lookup on disk."""
    async with Server(ServerOptions(model_repository=layout["repo"])) as server:
        with pytest.raises(errors.InvalidInputError, match="path separator"):
            server.get_version("../outside/evil")
        with pytest.raises(errors.ModelNotFoundError):
            server.get_version("no_such_model")
    await anyio.lowlevel.checkpoint()
    assert not layout["marker"].exists()


def test_pipeline_member_with_a_path_is_refused_before_lookup() -> None:
    """A pipeline step naming model '../x' fails validation naming the step, and the member
    lookup (which would read the repository) is never asked about it."""
    from dagserve import ConfigError, ModelConfig, Pipeline
    from dagserve.dsl import check_pipeline

    asked: list[str] = []

    def lookup(name: str, version: int) -> ModelConfig:
        asked.append(name)
        raise errors.ModelNotFoundError(name)

    p = Pipeline("p")
    p.input("X", "FP32", [1])
    p.step("s", "../outside/evil", inputs={"X": "X"})
    p.output("Y", "s.Y", "FP32", [1])
    with pytest.raises(ConfigError, match=r"step 's'.*path separator"):
        check_pipeline(p.build(), lookup)
    assert asked == []


@pytest.mark.parametrize("allow", [False, True])
def test_cli_allow_symlinks_flag(layout: dict[str, Path], allow: bool) -> None:
    """`dagserve serve` refuses a symlinked model directory (it reports it unavailable) unless
    --allow-symlinks-outside-repository is given, which loads it (the canary fires)."""
    (layout["repo"] / "link").symlink_to(layout["evil"])
    flags = ["--allow-symlinks-outside-repository"] if allow else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(layout["repo"]),
         "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "HTTP service listening" in line:
                break
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    text = "".join(lines) + out
    link_line = next(line for line in lines if line.startswith("model link"))
    if allow:
        assert "READY" in link_line, text
        assert layout["marker"].read_text() == "imported"
    else:
        assert "UNAVAILABLE" in link_line and "symlink" in text, text
        assert not layout["marker"].exists()


# -- poll mode ---------------------------------------------------------------------------------
POLL_DEADLINE = 60.0


def _wait_for_index(running, name: str, what: str, condition) -> dict:  # type: ignore[no-untyped-def]
    """Poll the repository index (generous deadline) until ``name``'s entry satisfies
    ``condition`` (a directory not yet polled is listed UNAVAILABLE with reason 'unloaded')."""
    import time

    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        entry = next((m for m in running.server.repository_index() if m["name"] == name), None)
        if entry is not None and condition(entry):
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {POLL_DEADLINE} s waiting until {what}; last entry {entry}")
        time.sleep(0.05)


def _add_sub_answers(http: httpclient.InferenceServerClient) -> None:
    import numpy as np

    a = np.arange(4, dtype=np.float32)
    b = np.full(4, 2.0, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = http.infer("add_sub", inputs)
    assert (result.as_numpy("OUTPUT0") == a + b).all()


@pytest.mark.parametrize("allow", [False, True])
def test_poll_refuses_a_symlinked_model_dir_added_later(layout: dict[str, Path], allow: bool) -> None:
    """Poll mode: a model directory that appears in the repository as a symlink to a directory
    outside it is reported UNAVAILABLE with a reason naming the symlink, and its model.py is
    never imported; add_sub keeps answering. Control (``allow``): with
    allow_symlinks_outside_repository the same change loads the model and the canary fires."""
    with serve_in_thread(layout["repo"], grpc=False, metrics=False, model_control_mode="poll",
                         repository_poll_secs=0.2, allow_symlinks_outside_repository=allow) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        assert http.is_model_ready("add_sub")
        (layout["repo"] / "link").symlink_to(layout["evil"])  # one atomic change on disk
        if allow:
            _wait_for_index(running, "link", "the poll loads 'link'", lambda e: e.get("state") == "READY")
            assert layout["marker"].read_text() == "imported"
        else:
            entry = _wait_for_index(running, "link", "the poll reports 'link' unavailable",
                                    lambda e: e.get("state") == "UNAVAILABLE" and e.get("reason") != "unloaded")
            assert "symlink" in entry["reason"] and "allow-symlinks-outside-repository" in entry["reason"]
            assert str(layout["repo"] / "link") in entry["reason"]
            assert not http.is_model_ready("link")
        _add_sub_answers(http)
    if not allow:
        assert not layout["marker"].exists()


# -- dagserve validate -------------------------------------------------------------------------
def _escape(layout: dict[str, Path], how: str) -> str:
    """Make model ``how`` in the repository escape it; returns the model's name."""
    repo = layout["repo"]
    if how == "symlinked_dir":
        (repo / how).symlink_to(layout["evil"])
    elif how == "symlinked_file":
        (repo / how / "1").mkdir(parents=True)
        (repo / how / "config.pbtxt").write_text(CANARY_CONFIG)
        (repo / how / "1" / "model.py").symlink_to(layout["outside"] / "evil.py")
    else:  # default_model_filename climbing out of the version directory to outside/evil.py
        (repo / how / "1").mkdir(parents=True)
        (repo / how / "config.pbtxt").write_text(CANARY_CONFIG + 'default_model_filename: "../../../outside/evil.py"\n')
    return how


@pytest.mark.parametrize("how", ["symlinked_dir", "symlinked_file", "default_model_filename"])
def test_validate_applies_confinement(layout: dict[str, Path], how: str) -> None:
    """`dagserve validate` reports a model escaping the repository as an error with the
    server's own message (check_source), exits 1, still checks the other models, and imports
    nothing (the canary stays quiet)."""
    from dagserve.repository.confine import check_source
    from dagserve.repository.loader import read_model

    name = _escape(layout, how)
    with pytest.raises(errors.InvalidInputError) as server_said:
        check_source(read_model(layout["repo"] / name), layout["repo"])
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "validate", str(layout["repo"])],
        check=False, capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"error: {name}: {server_said.value}" in proc.stdout.splitlines(), proc.stdout
    assert "ok: add_sub" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not layout["marker"].exists()


def test_validate_allow_symlinks_control(layout: dict[str, Path]) -> None:
    """Control: validating with allow_symlinks_outside imports the symlinked model (the canary
    fires), so it is the confinement check that kept `dagserve validate` from importing it."""
    from dagserve.validation import validate_repository

    name = _escape(layout, "symlinked_dir")
    report = validate_repository(layout["repo"], allow_symlinks_outside=True)
    assert {m.name: m.ok for m in report.models}[name] is True, report.findings
    assert layout["marker"].read_text() == "imported"
