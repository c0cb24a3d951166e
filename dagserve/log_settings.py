"""The server log: Triton's log settings, formats, and changing them at run time.

Triton's settings (the logging extension, ``GET/POST /v2/logging`` and gRPC ``LogSettings``,
and the ``--log-*`` flags) with its names and meanings:

* ``log_info`` / ``log_warning`` / ``log_error``: whether INFO, WARNING and ERROR records are
  written (CRITICAL counts as ERROR);
* ``log_verbose_level``: 0 writes no verbose record; N writes those of verbose level <= N. A
  verbose record of level N is a Python record of level ``logging.DEBUG - (N - 1)``
  (:func:`verbose`), so ``log.debug`` is verbose level 1;
* ``log_format``: ``default`` (Triton's ``I1202 13:05:55.829575 4242 model.py:164] text``),
  ``ISO8601`` (``2026-12-02T13:05:55Z I 4242 model.py:164] text``) or ``json`` (one JSON
  object per line, fields in :class:`LogFormatter`);
* ``log_file``: the file the log is appended to ("": standard error). Set at start only.

The settings are the process's, like Python's logging itself. :func:`log_control` is the one
:class:`LogControl`; ``dagserve serve`` calls its :meth:`~LogControl.configure`, which puts one
handler on the root logger. A server embedded in a program that configures logging itself
leaves that alone: there a change of settings only sets the ``dagserve`` logger's level (the
least severe kind of record still on), and the program's handlers format the records.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import IO, Any

from .errors import InvalidInputError, UnsupportedError

__all__ = ["FORMATS", "LogControl", "LogFormatter", "LogSettings", "log_control", "verbose"]

FORMATS = ("default", "ISO8601", "json")
"""The log formats, spelt as the settings report them (``iso8601`` is accepted for ISO8601)."""

_MAX_VERBOSE = 2**32 - 1  # Triton's log_verbose_level is a uint32


def verbose(level: int) -> int:
    """The Python logging level of verbose level ``level`` (>= 1): DEBUG for 1, one lower
    for each level above (at least 1), e.g. ``log.log(verbose(2), "...")``."""
    return max(1, logging.DEBUG - (level - 1))


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """Triton's log settings; see the module docstring for each field."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_format", _format_name(self.log_format))
        if isinstance(self.log_verbose_level, bool) or not 0 <= self.log_verbose_level <= _MAX_VERBOSE:
            raise InvalidInputError(
                f"log_verbose_level must be an integer from 0 to {_MAX_VERBOSE}, got {self.log_verbose_level!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """The settings as the logging extension reports them, in Triton's order."""
        return asdict(self)

    def updated(self, changes: Mapping[str, Any]) -> LogSettings:
        """These settings with ``changes`` (setting name -> value) applied; a value of None
        leaves its setting as it is (Triton's HTTP endpoint ignores JSON null).

        Raises:
            InvalidInputError: an unknown setting, or a value of the wrong type or range
                (checked for every change before any applies).
            UnsupportedError: a ``log_file`` other than the current one: the file is chosen
                at start (``--log-file``), as on Triton.
        """
        current = asdict(self)
        update: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in current:
                raise InvalidInputError(
                    f"unknown log setting '{name}' (the settings are {', '.join(current)})"
                )
            if value is None:
                continue
            if name == "log_file":
                if value != self.log_file:
                    raise UnsupportedError("log file location can not be updated through network protocol "
                                           "(start the server with --log-file)")
                continue
            if name in ("log_info", "log_warning", "log_error"):
                if type(value) is not bool:
                    raise InvalidInputError(f"log setting '{name}' must be a boolean, got {value!r}")
            elif name == "log_verbose_level":
                if type(value) is not int or not 0 <= value <= _MAX_VERBOSE:
                    raise InvalidInputError(
                        f"log setting 'log_verbose_level' must be an integer from 0 to {_MAX_VERBOSE}, got {value!r}"
                    )
            elif name == "log_format":
                if type(value) is not str:
                    raise InvalidInputError(f"log setting 'log_format' must be a string, got {value!r}")
                value = _format_name(value)
            update[name] = value
        return replace(self, **update)

    def threshold(self) -> int:
        """The least severe Python level any enabled kind of record has (a logger level)."""
        if self.log_verbose_level:
            return verbose(self.log_verbose_level)
        for on, level in ((self.log_info, logging.INFO), (self.log_warning, logging.WARNING),
                          (self.log_error, logging.ERROR)):
            if on:
                return level
        return logging.CRITICAL + 1

    def allows(self, level: int) -> bool:
        """Whether a record of Python level ``level`` is written."""
        if level >= logging.ERROR:
            return self.log_error
        if level >= logging.WARNING:
            return self.log_warning
        if level >= logging.INFO:
            return self.log_info
        return level >= verbose(self.log_verbose_level) if self.log_verbose_level else False


def _format_name(value: str) -> str:
    for name in FORMATS:
        if value.lower() == name.lower():
            return name
    raise InvalidInputError(f"invalid argument for log_format, got: {value!r} (expected {', '.join(FORMATS)})")


_LETTERS = ((logging.ERROR, "E"), (logging.WARNING, "W"), (logging.INFO, "I"))
_EVENT_FIELDS = ("model", "version", "state", "previous_state", "reason", "error_id")
"""Fields a record may carry (``extra={...}``) that the json format writes as fields of their own."""


class LogFormatter(logging.Formatter):
    """One record as Triton writes it (``default``, ``ISO8601``) or as one JSON object.

    Times are UTC. ``<file>:<line>`` is the Python file and line that logged. A traceback
    follows the message on the next lines (Triton's multi-line entry).

    The ``json`` object has: ``time`` (ISO 8601 UTC with microseconds and ``Z``), ``level``
    (``ERROR``, ``WARNING``, ``INFO`` or ``VERBOSE``), ``verbose_level`` (VERBOSE only),
    ``pid``, ``logger`` (the Python logger's name), ``file``, ``line``, ``message``,
    ``traceback`` (when the record has an exception), and, when the record carries them,
    ``model``, ``version``, ``state``, ``previous_state``, ``reason`` (model state changes)
    and ``error_id``.
    """

    def __init__(self, log_format: str = "default") -> None:
        super().__init__()
        self.log_format = _format_name(log_format)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        trace = ""
        if record.exc_info:
            trace = self.formatException(record.exc_info)
        elif record.exc_text:
            trace = record.exc_text
        if record.stack_info:
            trace = (trace + "\n" if trace else "") + self.formatStack(record.stack_info)
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        if self.log_format == "json":
            return self._json(record, message, trace, when)
        letter = next((c for level, c in _LETTERS if record.levelno >= level), "V")
        if self.log_format == "ISO8601":
            head = f"{when:%Y-%m-%dT%H:%M:%SZ} {letter}"
        else:
            head = f"{letter}{when:%m%d %H:%M:%S.%f}"
        line = f"{head} {record.process} {record.filename}:{record.lineno}] {message}"
        return f"{line}\n{trace}" if trace else line

    @staticmethod
    def _json(record: logging.LogRecord, message: str, trace: str, when: datetime.datetime) -> str:
        entry: dict[str, Any] = {"time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        if record.levelno >= logging.INFO:
            entry["level"] = logging.getLevelName(min(record.levelno, logging.ERROR))
        else:
            entry["level"] = "VERBOSE"
            entry["verbose_level"] = logging.DEBUG - record.levelno + 1
        entry.update(pid=record.process, logger=record.name, file=record.filename, line=record.lineno,
                     message=message)
        if trace:
            entry["traceback"] = trace
        for name in _EVENT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


class _SettingsFilter(logging.Filter):
    def __init__(self, control: LogControl) -> None:
        super().__init__()
        self._control = control

    def filter(self, record: logging.LogRecord) -> bool:
        return self._control.settings.allows(record.levelno)


class LogControl:
    """The process's log settings and, once :meth:`configure`\\ d, the handler writing them.

    Thread-safe: settings change as one value (a reader sees the old or the new settings).
    """

    def __init__(self) -> None:
        self._settings = LogSettings()
        self._handler: logging.Handler | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> LogSettings:
        return self._settings

    @property
    def configured(self) -> bool:
        """Whether this control writes the log (:meth:`configure` was called)."""
        return self._handler is not None

    def configure(self, settings: LogSettings, stream: IO[str] | None = None) -> None:
        """Write the log as ``settings`` say: one handler on the root logger (to
        ``settings.log_file``, appended, or to ``stream``, standard error by default),
        replacing the one an earlier call put there.

        Raises:
            OSError: the log file cannot be opened.
        """
        handler: logging.Handler
        if settings.log_file:
            handler = logging.FileHandler(settings.log_file, mode="a", encoding="utf-8")
        else:
            handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        handler.setFormatter(LogFormatter(settings.log_format))
        handler.addFilter(_SettingsFilter(self))
        root = logging.getLogger()
        with self._lock:
            if self._handler is not None:
                root.removeHandler(self._handler)
                self._handler.close()
            self._handler = handler
            self._settings = settings
            root.addHandler(handler)
            self._apply()

    def update(self, changes: Mapping[str, Any]) -> LogSettings:
        """Apply ``changes`` (see :meth:`LogSettings.updated`) and return the new settings.

        Raises:
            InvalidInputError / UnsupportedError: as :meth:`LogSettings.updated`; nothing changes.
        """
        with self._lock:
            new = self._settings.updated(changes)
            if new != self._settings:
                logging.getLogger("dagserve").info(
                    "log settings changed: %s",
                    ", ".join(f"{k}={v}" for k, v in new.as_dict().items() if getattr(self._settings, k) != v),
                )
            self._settings = new
            self._apply()
            return new

    def _apply(self) -> None:
        level = self._settings.threshold()
        if self._handler is not None:
            self._handler.setFormatter(LogFormatter(self._settings.log_format))
            logging.getLogger().setLevel(level)
            logging.getLogger("dagserve").setLevel(logging.NOTSET)
        else:
            logging.getLogger("dagserve").setLevel(level)


_CONTROL = LogControl()


def log_control() -> LogControl:
    """The process's :class:`LogControl`."""
    return _CONTROL

