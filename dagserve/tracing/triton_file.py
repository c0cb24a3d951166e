"""``triton`` trace mode: Triton's JSON trace file.

Each traced model call (the requested model, and each model a pipeline step calls) is one
Triton trace with an ``id``, its ``model_name``, ``model_version``, ``request_id`` and, for a
pipeline's member, the ``parent_id`` of the pipeline's trace; ``TIMESTAMPS`` adds its
timestamps (``REQUEST_START``, ``QUEUE_START``, ``COMPUTE_START``, ``COMPUTE_END``,
``REQUEST_END``, and the frontend's ``HTTP_*`` / ``GRPC_*`` ones on the requested model's
trace), in nanoseconds of the monotonic clock, as Triton writes them. So Triton's
``trace_summary.py`` reads the file.

Writing follows Triton: with ``log_frequency`` N, every N traces go to ``<file>.<index>``;
with 0, everything goes to ``<file>`` when the server stops; when ``trace_count`` runs out,
what is collected goes to ``<file>.<index>`` at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["TritonFileExporter"]

log = logging.getLogger("dagserve.tracing")

_ids = itertools.count(1)

_FRONTEND_EVENTS = {
    "http": (("HTTP_RECV_START", "HTTP_RECV_END"), ("HTTP_SEND_START", "HTTP_SEND_END")),
    "grpc": (("GRPC_WAITREAD_START", "GRPC_WAITREAD_END"), ("GRPC_SEND_START", "GRPC_SEND_END")),
}


class _TraceFile:
    """One trace file: the traces of each setting writing to it, kept apart as Triton keeps
    one stream per setting."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.index = 0
        self.pending: dict[int, tuple[Any, list[str]]] = {}  # id(setting) -> (setting, traces)
        self.at_exit: list[str] = []  # written to the file itself when the server stops

    def add(self, setting: Any, trace: str) -> None:
        _, traces = self.pending.setdefault(id(setting), (setting, []))
        traces.append(trace)
        if (setting.log_frequency and len(traces) >= setting.log_frequency) or setting.count == 0:
            self.write(traces, indexed=True)
            traces.clear()

    def retire(self, setting: Any) -> None:
        """``setting`` was replaced: its traces go where it would have put them at shutdown."""
        entry = self.pending.pop(id(setting), None)
        if entry is None or not entry[1]:
            return
        if setting.log_frequency:
            self.write(entry[1], indexed=True)
        else:
            self.at_exit += entry[1]

    def close(self) -> None:
        for setting, _ in list(self.pending.values()):
            self.retire(setting)
        if self.at_exit:
            self.write(self.at_exit, indexed=False)
            self.at_exit = []

    def write(self, traces: list[str], *, indexed: bool) -> None:
        text = "[" + ",".join(traces) + "]"
        path = f"{self.path}.{self.index}" if indexed else self.path
        if indexed:
            self.index += 1
        try:
            Path(path).write_text(text)
        except OSError as exc:
            log.error("could not write the trace file %s: %s", path, exc)


class TritonFileExporter:
    """Collects each sampled request's traces and writes them to the setting's trace file."""

    def __init__(self) -> None:
        self._files: dict[str, _TraceFile] = {}

    def parent(self, headers: Any) -> None:
        """Triton mode continues no client trace."""

    def root(self, model: str, protocol: str, parent: Any, setting: Any) -> _Root:
        return _Root(self, setting, protocol)

    def finished(self, setting: Any, records: list[dict[str, Any]]) -> None:
        file = self._files.get(setting.file)
        if file is None:
            file = self._files[setting.file] = _TraceFile(setting.file)
        file.add(setting, ",".join(json.dumps(r, separators=(",", ":")) for r in records))

    def retire(self, setting: Any) -> None:
        file = self._files.get(setting.file)
        if file is not None:
            file.retire(setting)

    def flush(self) -> None:
        """Files are written on Triton's schedule; nothing to do."""

    def close(self) -> None:
        for file in self._files.values():
            file.close()


class _Root:
    """The request as the frontend sees it; its timestamps go on the requested model's trace."""

    __slots__ = ("_exporter", "_first", "_protocol", "_received", "_setting", "records", "timestamps")

    def __init__(self, exporter: TritonFileExporter, setting: Any, protocol: str) -> None:
        self._exporter = exporter
        self._setting = setting
        self._protocol = protocol
        self.records: list[dict[str, Any]] = []
        self.timestamps = setting.timestamps
        self._received = time.monotonic_ns()
        self._first: _Model | None = None

    def model(self, name: str, version: str, request_id: str) -> _Model:
        span = _Model(self, name, version, request_id, 0)
        if self._first is None:
            self._first = span
        return span

    def step(self, pipeline: str, step: str, model: str) -> _Root:
        return self

    def compute(self, model: str, batch_size: int, requests: int) -> _Root:
        return self

    def event(self, name: str) -> None:
        pass

    def traceparent(self) -> None:
        """Triton's trace ids are not W3C ones."""

    def end(self, error: BaseException | None = None) -> None:
        first = self._first
        if first is None:
            return  # the request failed before reaching a model
        if self.timestamps:
            receive, send = _FRONTEND_EVENTS.get(self._protocol, ((), ()))
            now = time.monotonic_ns()
            for name in receive:
                self.records.append(_timestamp(first.id, name, self._received))
            for name in send:
                self.records.append(_timestamp(first.id, name, now))
        try:
            self._exporter.finished(self._setting, self.records)
        except Exception:  # tracing never fails a request
            log.exception("could not record a trace")


class _Model:
    """One model call: one Triton trace id."""

    __slots__ = ("_root", "id")

    def __init__(self, root: _Root, name: str, version: str, request_id: str, parent_id: int) -> None:
        self._root = root
        self.id = next(_ids)
        record: dict[str, Any] = {
            "id": self.id, "model_name": name, "model_version": int(version) if version.isdigit() else -1,
        }
        if request_id:
            record["request_id"] = request_id
        if parent_id:
            record["parent_id"] = parent_id
        root.records.append(record)
        self.event("REQUEST_START")

    def model(self, name: str, version: str, request_id: str) -> _Model:
        return _Model(self._root, name, version, request_id, self.id)

    def step(self, pipeline: str, step: str, model: str) -> _Model:
        return self  # Triton has no step traces: the member's trace names the pipeline's as parent

    def compute(self, model: str, batch_size: int, requests: int) -> _Compute:
        self.event("COMPUTE_START")
        return _Compute(self)

    def event(self, name: str) -> None:
        if self._root.timestamps:
            self._root.records.append(_timestamp(self.id, name, time.monotonic_ns()))

    def traceparent(self) -> None:
        """Triton's trace ids are not W3C ones."""

    def end(self, error: BaseException | None = None) -> None:
        self.event("REQUEST_END")


class _Compute:
    __slots__ = ("_model",)

    def __init__(self, model: _Model) -> None:
        self._model = model

    def model(self, name: str, version: str, request_id: str) -> _Model:
        return self._model.model(name, version, request_id)

    def step(self, pipeline: str, step: str, model: str) -> _Compute:
        return self

    def compute(self, model: str, batch_size: int, requests: int) -> _Compute:
        return self

    def event(self, name: str) -> None:
        self._model.event(name)

    def traceparent(self) -> None:
        """Triton's trace ids are not W3C ones."""

    def end(self, error: BaseException | None = None) -> None:
        self._model.event("COMPUTE_END")


def _timestamp(trace_id: int, name: str, ns: int) -> dict[str, Any]:
    return {"id": trace_id, "timestamps": [{"name": name, "ns": ns}]}
