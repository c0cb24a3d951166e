"""The logging extension and the --log-* flags: settings with Triton's names, read and changed
at run time over HTTP and gRPC with the real tritonclient, bad values refused, and a real
`dagserve serve` whose log lines follow the chosen format and the settings of the moment,
with one line per model state change."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc as grpc_lib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from dagserve.errors import InvalidInputError, UnsupportedError
from dagserve.log_settings import LogFormatter, LogSettings, log_control, verbose
from dagserve.testing import serve_in_thread, wait_until

REPO = Path(__file__).parent / "repos" / "logging"
DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
            "log_verbose_level": 0, "log_format": "default"}
LINE = {  # the head of every log line, per format (the message follows "] ")
    "default": r"[IWEV]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ [\w.]+:\d+\] ",
    "ISO8601": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [IWEV] \d+ [\w.]+:\d+\] ",
}


# -- settings and formats ------------------------------------------------------------------------
def test_settings_changes_are_checked_before_any_applies() -> None:
    """Each bad value names the setting; a request with one bad value changes nothing."""
    settings = LogSettings()
    assert settings.as_dict() == DEFAULTS
    changed = settings.updated({"log_verbose_level": 2, "log_format": "iso8601", "log_info": None})
    assert (changed.log_verbose_level, changed.log_format, changed.log_info) == (2, "ISO8601", True)
    for bad, text in (({"log_info": 1}, "'log_info' must be a boolean"),
                      ({"log_verbose_level": -1}, "'log_verbose_level' must be an integer from 0"),
                      ({"log_verbose_level": True}, "'log_verbose_level' must be an integer from 0"),
                      ({"log_verbose_level": 2**32}, "'log_verbose_level' must be an integer from 0"),
                      ({"log_format": "xml"}, "invalid argument for log_format, got: 'xml'"),
                      ({"log_warnings": False}, "unknown log setting 'log_warnings'"),
                      ({"log_error": False, "log_format": 3}, "'log_format' must be a string")):
        with pytest.raises(InvalidInputError, match=text):
            settings.updated(bad)
    with pytest.raises(UnsupportedError, match="log file location can not be updated"):
        settings.updated({"log_file": "/tmp/elsewhere.log"})
    assert settings.updated({"log_file": ""}) == settings  # the current file: no change


def test_settings_decide_which_levels_are_written() -> None:
    """Info, warning and error switch independently; verbose level N writes levels 1..N."""
    settings = LogSettings(log_info=False, log_warning=True, log_error=False, log_verbose_level=2)
    assert [settings.allows(level) for level in (logging.ERROR, logging.WARNING, logging.INFO)] == [False, True, False]
    assert settings.allows(logging.DEBUG) and settings.allows(verbose(2)) and not settings.allows(verbose(3))
    assert not LogSettings().allows(logging.DEBUG)


def record(level: int, message: str, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("dagserve.engine", level, "/x/model.py", 42, message, (), None)
    made.__dict__.update(extra)
    return made


def test_formats_write_triton_lines_and_json_objects() -> None:
    """default and ISO8601 write Triton's heads; json one object with the documented fields."""
    assert re.fullmatch(LINE["default"] + "hello", LogFormatter("default").format(record(logging.INFO, "hello")))
    assert re.fullmatch(LINE["ISO8601"] + "hello", LogFormatter("ISO8601").format(record(logging.WARNING, "hello")))
    assert LogFormatter("default").format(record(logging.DEBUG, "v")).startswith("V")
    entry = json.loads(LogFormatter("json").format(
        record(logging.INFO, "model 'm' version 1: LOADING -> READY", model="m", version="1", state="READY")
    ))
    assert entry.keys() == {"time", "level", "pid", "logger", "file", "line", "message", "model", "version", "state"}
    assert (entry["level"], entry["file"], entry["line"], entry["state"]) == ("INFO", "model.py", 42, "READY")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["time"])
    verbose_entry = json.loads(LogFormatter("json").format(record(verbose(3), "deep")))
    assert (verbose_entry["level"], verbose_entry["verbose_level"]) == ("VERBOSE", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("m", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(LogFormatter("json").format(failed))["traceback"]


# -- the extension over both protocols, in process -----------------------------------------------
@pytest.fixture
def restored() -> Iterator[None]:
    """Put the process's log settings (and the dagserve logger's level) back afterwards."""
    before, level = log_control().settings, logging.getLogger("dagserve").level
    try:
        yield
    finally:
        log_control().update(before.as_dict())
        logging.getLogger("dagserve").setLevel(level)


@pytest.mark.usefixtures("restored")
def test_log_settings_over_http_and_grpc() -> None:
    """tritonclient reads the settings, changes some over one protocol and sees them over the
    other; "logging" is among the server's extensions."""
    with serve_in_thread(REPO, metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        assert "logging" in http.get_server_metadata()["extensions"]
        assert http.get_log_settings() == DEFAULTS
        assert http.update_log_settings({"log_verbose_level": 2, "log_format": "json"})["log_verbose_level"] == 2
        over_grpc = grpc.get_log_settings(as_json=True)["settings"]
        assert over_grpc["log_verbose_level"] == {"uint32_param": 2}
        assert over_grpc["log_format"] == {"string_param": "json"}
        assert over_grpc["log_info"] == {"bool_param": True}
        grpc.update_log_settings({"log_warning": False, "log_verbose_level": 0, "log_format": "ISO8601"})
        assert http.get_log_settings() == {**DEFAULTS, "log_warning": False, "log_format": "ISO8601"}


@pytest.mark.usefixtures("restored")
def test_bad_log_settings_are_400_and_invalid_argument() -> None:
    """A wrong type, a negative level, an unknown format or setting: 400 / INVALID_ARGUMENT,
    naming the setting; a new log_file is 501 / UNIMPLEMENTED, as on Triton; nothing changes."""
    with serve_in_thread(REPO, metrics=False) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        for bad, text in (({"log_info": "yes"}, "'log_info' must be a boolean"),
                          ({"log_verbose_level": -1}, "'log_verbose_level' must be an integer"),
                          ({"log_format": "xml"}, "invalid argument for log_format"),
                          ({"log_colour": True}, "unknown log setting 'log_colour'")):
            with pytest.raises(InferenceServerException, match=text) as failed:
                http.update_log_settings(bad)
            assert failed.value.status() == "400"
        with pytest.raises(InferenceServerException, match="log file location") as failed:
            http.update_log_settings({"log_file": "/tmp/elsewhere.log"})
        assert failed.value.status() == "501"
        for bad, text in (({"log_format": "xml"}, "invalid argument for log_format"),
                          ({"log_colour": True}, "unknown log setting 'log_colour'")):
            with pytest.raises(InferenceServerException, match=text) as failed:
                grpc.update_log_settings(bad)
            assert failed.value.status() == "StatusCode.INVALID_ARGUMENT"
        # tritonclient picks the value's field by the setting's name; a raw stub sends the wrong one.
        with grpc_lib.insecure_channel(running.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for name, field, value, text in (("log_info", "uint32_param", 1, "'log_info' must be a boolean"),
                                             ("log_verbose_level", "bool_param", True, "'log_verbose_level' must be"),
                                             ("log_format", "bool_param", True, "'log_format' must be a string")):
                request = service_pb2.LogSettingsRequest()
                setattr(request.settings[name], field, value)
                with pytest.raises(grpc_lib.RpcError) as raw:
                    stub.LogSettings(request)
                assert raw.value.code() == grpc_lib.StatusCode.INVALID_ARGUMENT
                assert text in str(raw.value.details())
        assert grpc.update_log_settings({"log_info": None}, as_json=True)["settings"]["log_info"] == {"bool_param": True}
        assert http.get_log_settings() == DEFAULTS


# -- a real `dagserve serve` ---------------------------------------------------------------------
class Served:
    def __init__(self, http: str, grpc: str, stderr: Path) -> None:
        self.http, self.grpc, self.stderr = http, grpc, stderr

    def lines(self) -> list[str]:
        return self.stderr.read_text().splitlines()

    def talk(self, tag: str) -> None:
        """One request to talker, which logs "<tag> verbose|info|warning|error" before answering."""
        with httpclient.InferenceServerClient(self.http) as client:
            tensor = httpclient.InferInput("TAG", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([tag.encode()], dtype=object))
            client.infer("talker", [tensor])

    def said(self, tag: str) -> set[str]:
        """Which of talker's messages for ``tag`` the log has."""
        kinds = set()
        for line in self.lines():
            match = re.search(rf"\b{tag} (verbose|info|warning|error)\b", line)
            if match:
                kinds.add(match.group(1))
        return kinds


@contextmanager
def dagserve_serve(tmp_path: Path, *flags: str) -> Iterator[Served]:
    """`dagserve serve` of the talker repository with ``flags``, its stderr in a file; SIGTERM
    at the end, exit status 0."""
    stderr = tmp_path / "stderr.log"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port", "0",
             "--grpc-port", "0", "--metrics-port", "-1", *flags],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        found: dict[str, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)", line)
            if match:
                found[match.group(1)] = match.group(2)
            if len(found) == 2:
                break
        else:
            raise AssertionError(f"exited ({proc.wait()}) before listening:\n{stderr.read_text()}")
        yield Served(found["HTTP"], found["gRPC"], stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.read_text()


def state_changes(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["previous_state"], e["state"], e["reason"]) for e in entries if e.get("model") == "talker"]


@pytest.mark.parametrize("log_format", ["default", "ISO8601", "json"])
def test_serve_log_follows_format_and_settings_of_the_moment(tmp_path: Path, log_format: str) -> None:
    """Every stderr line is in the chosen format; settings changed over HTTP then gRPC decide
    at once which of a model's messages are written; talker's state changes are logged with
    their reasons from LOADING to UNLOADED."""
    with dagserve_serve(tmp_path, "--log-format", log_format) as served:
        served.talk("first")
        assert served.said("first") == {"info", "warning", "error"}
        with httpclient.InferenceServerClient(served.http) as http:
            http.update_log_settings({"log_verbose_level": 1, "log_warning": False})
        served.talk("second")
        assert served.said("second") == {"verbose", "info", "error"}
        with grpcclient.InferenceServerClient(served.grpc) as grpc:
            grpc.update_log_settings({"log_info": False, "log_verbose_level": 0, "log_warning": True})
            served.talk("third")
            assert served.said("third") == {"warning", "error"}
            grpc.update_log_settings({"log_info": True})
    lines = [line for line in served.lines() if line]
    assert lines
    if log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line one JSON object
        assert all({"time", "level", "pid", "logger", "file", "line", "message"} <= e.keys() for e in entries)
        said = next(e for e in entries if e["message"] == "first warning")
        assert (said["level"], said["file"], said["logger"]) == ("WARNING", "model.py", "dagserve.model")
        changes = state_changes(entries)
        assert [c[:2] for c in changes] == [("UNLOADED", "LOADING"), ("LOADING", "READY"), ("READY", "UNLOADING"),
                                            ("UNLOADING", "UNLOADED")]
        assert changes[0][2] == "platform python" and changes[1][2].startswith("loaded in ")
        assert changes[2][2] == changes[3][2] == "server stopping"
    else:
        for line in lines:
            assert re.match(LINE[log_format], line), line
        transitions = [line for line in lines if "model 'talker' version 1: " in line]
        assert [re.search(r"version 1: (\w+ -> \w+)", t).group(1) for t in transitions] == [  # type: ignore[union-attr]
            "UNLOADED -> LOADING", "LOADING -> READY", "READY -> UNLOADING", "UNLOADING -> UNLOADED"]
        assert transitions[-1].endswith(": server stopping")
        assert re.match(LINE[log_format].replace(r"[\w.]+", "model.py"), next(x for x in lines if "first info" in x))


def test_log_flags_set_the_starting_settings(tmp_path: Path) -> None:
    """--log-level warning with --log-verbose 2, --log-format iso8601 and --log-file: the
    settings say so, and the log goes to the file only, in ISO8601."""
    log_file = tmp_path / "server.log"
    with dagserve_serve(tmp_path, "--log-level", "warning", "--log-verbose", "2", "--log-format", "iso8601",
                        "--log-file", str(log_file)) as served:
        with httpclient.InferenceServerClient(served.http) as http:
            settings = http.get_log_settings()
        served.talk("filed")
        wait_until(lambda: "filed warning" in log_file.read_text(), what="the warning in the log file")
    assert settings == {"log_file": str(log_file), "log_info": False, "log_warning": True, "log_error": True,
                        "log_verbose_level": 2, "log_format": "ISO8601"}
    text = log_file.read_text()
    assert "filed verbose" in text and "filed info" not in text
    assert all(re.match(LINE["ISO8601"], line) for line in text.splitlines() if line)
    assert "filed" not in served.stderr.read_text()


def test_bad_log_flags_are_usage_errors(tmp_path: Path) -> None:
    """A negative --log-verbose, an unknown --log-format or a non-boolean --log-info exit 2 naming it."""
    for flags, text in ((("--log-verbose", "-3"), "--log-verbose takes a level >= 0"),
                        (("--log-format", "xml"), "expected default, ISO8601 or json"),
                        (("--log-info", "maybe"), "--log-info")):
        done = subprocess.run([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), *flags],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and text in done.stderr, done.stderr
