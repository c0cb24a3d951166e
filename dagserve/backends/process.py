"""Process isolation for Python models: ``parameters: {execution: process}``.

Python code that holds the GIL for long (pure-Python loops, tokenizers) slows every other
request of the server. With ``execution: process`` each instance of the model runs in a worker
process of its own (started with ``spawn``, so nothing of the server is inherited); tensors
travel to it and back pickled over a pipe. The server side is a ``thread``-mode instance: a
worker thread waits on the pipe, so the event loop stays free.

Limits, by design: BLS calls and decoupled models need the server's event loop, so a
process-isolated model cannot use them; if the worker process dies, the batch in flight fails
with a clear error and the next batch starts a fresh process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .. import errors
from ..repository.config import ModelConfig
from ..types import InferRequest
from .base import ExecuteMode, ModelContext, Outputs

__all__ = ["ProcessModel"]

log = logging.getLogger("dagserve.backends.process")


class ProcessModel:
    """A Python model instance living in a worker process."""

    mode: ExecuteMode = "thread"

    def __init__(self, context: ModelContext) -> None:
        if context.config.model_transaction_policy.decoupled:
            raise errors.ConfigError(
                f"model '{context.name}': execution: process does not support decoupled models"
            )
        self._context = context
        self._spec = {
            "name": context.name,
            "version": context.version,
            "config": context.config.model_dump(mode="json"),
            "model_dir": str(context.model_dir),
            "version_dir": str(context.version_dir),
            "repository": str(context.repository),
            "instance_name": context.instance_name,
        }
        self._process: Any = None
        self._conn: Connection | None = None
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_child_main, args=(child, self._spec), name=f"dagserve-{self._context.instance_name}", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        status, detail = parent.recv() if parent.poll(60) else ("error", "the worker did not start within 60 s")
        if status != "ready":
            self.close()
            raise errors.ConfigError(f"model '{self._context.name}': worker process failed to load: {detail}")

    def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        if self._conn is None or not self._process.is_alive():
            self._start()
        assert self._conn is not None
        wire = [(dict(r.inputs), dict(r.datatypes), r.id, dict(r.parameters), r.outputs) for r in requests]
        try:
            self._conn.send(wire)
            results = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self._process.exitcode if self._process is not None else None
            self._conn = None
            error = errors.ModelExecutionError(
                f"model '{self._context.name}': its worker process died (exit code {code}); "
                "the next request starts a new one"
            )
            return [error] * len(requests)
        return [_revive(r) for r in results]

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)


def _revive(result: tuple[str, Any, Any]) -> Outputs | BaseException:
    kind, a, b = result
    if kind == "ok":
        return a
    cls = getattr(errors, a, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.DagserveError)):
        cls = errors.ModelExecutionError
    return cls(b)


def _child_main(conn: Connection, spec: dict[str, Any]) -> None:
    """The worker process: load the model inline, then answer batches until told to stop."""
    from . import python

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
        instance = python.load(context)
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
            results = [errors.ModelExecutionError(f"model '{context.name}': {type(exc).__name__}")] * len(requests)
        conn.send([
            ("ok", dict(r), None) if not isinstance(r, BaseException) else ("error", type(r).__name__, str(r))
            for r in results
        ])
    instance.close()
    loop.close()
