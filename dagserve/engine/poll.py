"""Poll mode (``--model-control-mode poll``): the repository on disk is the source of truth.

Every ``--repository-poll-secs`` seconds the server digests each model directory
(:func:`dagserve.repository.loader.fingerprint`: files, sizes, modification times, config
content) and compares with what it serves. :func:`diff` is that comparison, a pure function;
:func:`poll_repository` is the loop, a task in the server's task group. The server applies the
changes (:meth:`dagserve.engine.Server.apply_repository_changes`): a new directory loads, a
changed one (config edited, version directory added or removed, a model file replaced) reloads
beside the old versions and swaps without losing a request, a removed one unloads after its
requests in flight finish. A change that fails to load leaves the old versions serving and the
repository index showing why; it is not retried until the directory changes again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Changes", "diff", "poll_repository"]

log = logging.getLogger("dagserve.engine.poll")


@dataclass(frozen=True, kw_only=True, slots=True)
class Changes:
    """Model names to load, reload and unload, each sorted."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff(on_disk: Mapping[str, str], served: Mapping[str, tuple[str, str | None]]) -> Changes:
    """What to do to make the server match the repository.

    ``on_disk`` maps each model directory to its fingerprint; ``served`` maps each model
    loaded from the repository to (the fingerprint it was loaded from, the fingerprint of the
    last change that failed to load or None). A directory whose fingerprint matches either is
    left alone: unchanged, or the same broken change again.
    """
    added = sorted(set(on_disk) - set(served))
    removed = sorted(set(served) - set(on_disk))
    changed = sorted(
        name for name, digest in on_disk.items() if name in served and digest not in served[name]
    )
    return Changes(added=tuple(added), changed=tuple(changed), removed=tuple(removed))


async def poll_repository(
    server: Server, interval: float, *, task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Apply the repository's changes every ``interval`` seconds until cancelled; reports the
    cancel scope that stops it. A failing poll is logged and the next one tries again."""
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        while True:
            await anyio.sleep(interval)
            try:
                await server.apply_repository_changes()
            except Exception:  # one bad poll (a directory vanishing mid-read) must not end polling
                log.exception("polling the model repository failed; trying again in %s s", interval)
