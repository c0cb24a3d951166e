"""Process isolation for Python models: ``parameters: {execution: process}``.

With ``execution: process`` each instance of the model runs in a worker process of its own
(started with ``spawn``, so nothing of the server is inherited); tensors travel to it and back
pickled over a pipe. The server side is a ``thread``-mode instance: a worker thread waits on the
pipe, so the event loop stays free. Two reasons to pick it: Python code that holds the GIL for
long (pure-Python loops, tokenizers) no longer slows the rest of the server, and code that can
crash the interpreter (a segfault in a C extension, ``os._exit``, the OOM killer) takes down
only its worker.

When a worker dies:

* the requests of the batch it was running fail with
  :class:`~dagserve.errors.WorkerCrashedError` (HTTP 503, gRPC UNAVAILABLE) naming the model and
  how the process ended ("was killed by signal SIGSEGV", "exited with code 3");
* a supervisor thread of the instance notices the death at once (also of an idle worker) and
  starts a fresh worker in the background, which loads the model again (``initialize`` runs
  again); until it is ready, requests to that instance fail the same way, at once, naming the
  cause, so a client retries instead of queueing behind a restart;
* a restart that fails (the model's ``initialize`` raises or crashes) is retried with a backoff
  of 1 s doubling to 30 s; the requests' error says why it failed;
* other models, and other instances of the same model, never notice.

A worker that hangs (an endless loop, a deadlock in a C library) is caught only with the
parameter ``process_timeout_seconds``: a batch that gets no answer within it fails the same way
("did not answer within 30 s and was killed"), the worker is killed and replaced. Without it
(the default, 0) a batch may take as long as it takes.

Limits, by design: BLS calls and decoupled models need the server's event loop, so a
process-isolated model cannot use them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .. import errors
from ..repository.config import ModelConfig
from ..types import InferRequest
from .base import ExecuteMode, ModelContext, Outputs

__all__ = ["ProcessModel"]

log = logging.getLogger("dagserve.backends.process")

START_TIMEOUT_S = 60.0
"""Longest a worker may take to import and initialise the model before its start fails."""

_BACKOFF_S = (1.0, 30.0)
"""First and longest wait between two failed restarts."""


@dataclass(frozen=True, slots=True)
class _Worker:
    process: Any  # multiprocessing.Process of the spawn context
    conn: Connection
    # The request thread and the supervisor both ask how the process ended; two concurrent
    # joins race on waitpid and one of them sees no exit code, so they take turns.
    reaping: threading.Lock = field(default_factory=threading.Lock)

    def exit_cause(self) -> str:
        with self.reaping:
            return _exit_cause(self.process)


class _StartFailed(Exception):
    """A worker could not load the model; ``str()`` says why."""


class ProcessModel:
    """A Python model instance living in a worker process, restarted when that process dies."""

    mode: ExecuteMode = "thread"

    def __init__(self, context: ModelContext, load: Callable[[ModelContext], Any]) -> None:
        """Start the worker and wait until it has loaded the model with ``load`` (the python
        backend's ``load``, a module-level function: the worker gets it pickled by name, so
        this module need not import the backend that uses it).

        Raises:
            ConfigError: the model is decoupled, or the worker failed to load it.
        """
        if context.config.model_transaction_policy.decoupled:
            raise errors.ConfigError(
                f"model '{context.name}': execution: process does not support decoupled models"
            )
        self._name = context.name
        self._instance_name = context.instance_name
        self._timeout = _timeout(context)
        self._load = load
        self._spec = {
            "name": context.name,
            "version": context.version,
            "config": context.config.model_dump(mode="json"),
            "model_dir": str(context.model_dir),
            "version_dir": str(context.version_dir),
            "repository": str(context.repository),
            "instance_name": context.instance_name,
        }
        self._ctx = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._closing = False
        self._lock = threading.Lock()
        self._down = ""  # why there is no worker now (while restarting)
        self.restarts = 0  # workers started after a crash (for tests and the log)
        try:
            self._worker: _Worker | None = self._spawn()
        except _StartFailed as exc:
            self._wake_r.close()
            self._wake_w.close()
            raise errors.ConfigError(f"model '{self._name}': worker process failed to load: {exc}") from None
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"dagserve-supervise-{self._instance_name}", daemon=True
        )
        self._supervisor.start()

    # -- the request path ---------------------------------------------------------------

    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Run a batch in the worker; every request fails with WorkerCrashedError if the
        worker is down or dies meanwhile."""
        with self._lock:
            worker, down = self._worker, self._down
        if worker is None:
            error = errors.WorkerCrashedError(
                f"model '{self._name}' is unavailable: its worker process {down}; "
                "a new one is starting, try again"
            )
            return [error] * len(requests)
        wire = [(dict(r.inputs), dict(r.datatypes), r.id, dict(r.parameters), r.outputs) for r in requests]
        try:
            worker.conn.send(wire)
            if self._timeout and not worker.conn.poll(self._timeout):
                return self._lost(worker, f"did not answer within {self._timeout:g} s and was killed", len(requests))
            results = worker.conn.recv()
        except (EOFError, OSError):
            return self._lost(worker, "", len(requests))
        return [_revive(r) for r in results]

    def _lost(self, worker: _Worker, cause: str, n: int) -> list[Outputs | BaseException]:
        """Mark ``worker`` gone (killing it if it still runs; the supervisor starts a new one)
        and fail the ``n`` requests it had, naming ``cause`` or how it ended."""
        if cause:
            with self._lock:
                if self._worker is worker:
                    self._worker, self._down = None, cause
            worker.process.kill()
            worker.exit_cause()  # reap it
        else:
            cause = worker.exit_cause()
            if worker.process.is_alive():  # a broken pipe to a live worker: replace it too
                worker.process.kill()
            with self._lock:
                if self._worker is worker:
                    self._worker, self._down = None, cause
        crashed = errors.WorkerCrashedError(
            f"model '{self._name}' is unavailable: its worker process {cause} while running this "
            "request; a new one is starting"
        )
        return [crashed] * n

    # -- lifecycle ----------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        """Start a worker and wait for it to load the model (interrupted by close()).

        Raises:
            _StartFailed: the model failed to load, the worker died, or it took too long.
        """
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child_main, args=(child, self._spec, self._load), name=f"dagserve-{self._instance_name}", daemon=True
        )
        process.start()
        child.close()
        ready = wait([parent, self._wake_r], timeout=START_TIMEOUT_S)
        try:
            if parent not in ready:
                raise _StartFailed("closing" if ready else f"the worker did not load the model within {START_TIMEOUT_S:.0f} s")
            try:
                status, detail = parent.recv()
            except (EOFError, OSError):
                raise _StartFailed(f"the worker process {_exit_cause(process)} while loading the model") from None
            if status != "ready":
                raise _StartFailed(detail)
        except _StartFailed:
            parent.close()
            _stop(process)
            raise
        return _Worker(process, parent)

    def _supervise(self) -> None:
        """Wait for the worker to die (or for close()), then start a new one, with backoff."""
        with self._lock:
            worker = self._worker
        assert worker is not None
        while True:
            ready = wait([worker.process.sentinel, self._wake_r])
            if self._wake_r in ready:
                return
            cause = worker.exit_cause()
            worker.conn.close()
            with self._lock:
                # A cause the request thread gave (a timeout) says more than "killed by SIGKILL".
                cause = self._down if self._worker is None and self._down else cause
                self._worker, self._down = None, cause
            log.error("model '%s' (%s): worker process %s; starting a new one", self._name, self._instance_name, cause)
            delay = _BACKOFF_S[0]
            while True:
                try:
                    new = self._spawn()
                except _StartFailed as exc:
                    if self._closing:
                        return
                    with self._lock:
                        self._down = f"{cause}, and starting a new one failed ({exc})"
                    log.error("model '%s' (%s): new worker failed to load: %s; retrying in %.0f s",
                              self._name, self._instance_name, exc, delay)
                    if self._wake_r.poll(delay):
                        return
                    delay = min(delay * 2, _BACKOFF_S[1])
                    continue
                with self._lock:
                    self._worker, self._down = new, ""
                    self.restarts += 1
                log.info("model '%s' (%s): new worker process ready", self._name, self._instance_name)
                worker = new
                break

    def close(self) -> None:
        """Stop the supervisor, then ask the worker to finalize the model and exit (killed
        if it does not within 10 s). Blocking; never concurrent with execute."""
        self._closing = True
        self._wake_w.send_bytes(b"x")
        self._supervisor.join()
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.conn.close()
            _stop(worker.process, grace=10.0)
        self._wake_r.close()
        self._wake_w.close()


def _timeout(context: ModelContext) -> float:
    """The ``process_timeout_seconds`` parameter (0, the default: wait for ever)."""
    raw = context.config.parameters.get("process_timeout_seconds", "0")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise errors.ConfigError(
            f"model '{context.name}': parameter process_timeout_seconds must be a number of seconds >= 0, not {raw!r}"
        )
    return value


def _stop(process: Any, grace: float = 0.0) -> None:
    """Wait up to ``grace`` seconds for ``process`` to exit, then terminate, then kill it."""
    process.join(timeout=grace)
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()


def _exit_cause(process: Any) -> str:
    """How ``process`` ended, in words ("was killed by signal SIGSEGV", "exited with code 3")."""
    process.join(timeout=5)
    code = process.exitcode
    if code is None:
        return "closed its pipe but is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {name}"
    return f"exited with code {code}"


def _revive(result: tuple[str, Any, Any]) -> Outputs | BaseException:
    kind, a, b = result
    if kind == "ok":
        return a
    cls = getattr(errors, a, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.DagserveError)):
        cls = errors.ModelExecutionError
    return cls(b)


def _child_main(conn: Connection, spec: dict[str, Any], load: Callable[[ModelContext], Any]) -> None:
    """The worker process: load the model inline, then answer batches until told to stop."""
    # The server decides when its workers stop: a Ctrl-C in the terminal reaches the whole
    # process group, and must not kill the workers under requests the server is draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = ModelConfig.model_validate(spec["config"])
    params = dict(config.parameters, execution="inline")
    context = ModelContext(
        name=spec["name"],
        version=spec["version"],
        config=config.model_copy(update={"parameters": params}),
        model_dir=Path(spec["model_dir"]),
        version_dir=Path(spec["version_dir"]),
        repository=Path(spec["repository"]),
        instance_name=spec["instance_name"],
    )
    try:
        instance = load(context)
    except Exception as exc:  # noqa: BLE001 - reported to the server, which fails the load
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", ""))
    loop = asyncio.new_event_loop()
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            break
        if batch is None:
            break
        requests = [
            InferRequest(inputs=i, datatypes=d, id=rid, parameters=p, outputs=o) for i, d, rid, p, o in batch
        ]
        try:
            results = instance.execute(requests)
            if inspect.isawaitable(results):
                results = loop.run_until_complete(results)
        except Exception as exc:  # noqa: BLE001
            results = [errors.ModelExecutionError(f"model '{context.name}': {type(exc).__name__}: {exc}")] * len(requests)
        conn.send([
            ("ok", dict(r), None) if not isinstance(r, BaseException) else ("error", type(r).__name__, str(r))
            for r in results
        ])
    instance.close()
    loop.close()
