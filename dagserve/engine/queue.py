"""The dynamic batcher's queue: priority levels, per-level queue policies, and timeouts.

Semantics follow Triton's ``ModelDynamicBatching``: ``priority_levels`` levels where 1 is the
highest; a request's ``priority`` parameter picks its level (0 or absent = the default level);
each level has a queue policy (``priority_queue_policy`` or ``default_queue_policy``) giving its
``max_queue_size`` (a full level refuses at once), ``default_timeout_microseconds``, whether a
request's own ``timeout`` parameter may override it, and what happens when a queued request
times out: ``REJECT`` (it fails with a timeout) or ``DELAY`` (it is served after every request
that has not timed out).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio

from ..backends.base import Outputs
from ..errors import OverloadedError
from ..repository.config import DynamicBatching, QueuePolicy
from ..types import InferRequest
from .parameters import check_parameters, check_priority

__all__ = ["LevelPolicy", "QueuedRequest", "RequestQueue"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LevelPolicy:
    """The queue policy of one priority level, in seconds."""

    timeout: float = 0.0
    delay_on_timeout: bool = False
    allow_override: bool = False
    max_size: int = 0

    @classmethod
    def from_config(cls, policy: QueuePolicy | None) -> LevelPolicy:
        if policy is None:
            return cls()
        return cls(
            timeout=policy.default_timeout_microseconds / 1e6,
            delay_on_timeout=policy.timeout_action == "DELAY",
            allow_override=policy.allow_timeout_override,
            max_size=policy.max_queue_size,
        )

    def timeout_for(self, request: InferRequest) -> float:
        """The queue timeout of ``request`` in seconds (0 = none)."""
        override = request.parameters.get("timeout")
        if override and self.allow_override:
            return int(override) / 1e6
        return self.timeout


class QueuedRequest:
    """One request waiting in (or taken from) the queue."""

    __slots__ = (
        "cancelled",
        "deadline",
        "done",
        "enqueued",
        "key",
        "level",
        "queue_ns",
        "request",
        "result",
        "size",
        "started",
    )

    def __init__(self, request: InferRequest, size: int, key: Any, level: int, enqueued: int, deadline: float) -> None:
        self.request = request
        self.size = size
        self.key = key
        self.level = level
        self.enqueued = enqueued  # perf_counter_ns
        self.deadline = deadline  # anyio.current_time() value, or inf
        self.done = anyio.Event()
        self.result: Outputs | BaseException | None = None
        self.cancelled = False
        self.started = False
        self.queue_ns = 0


class RequestQueue:
    """Queued requests in the order they should be served: by level, then arrival."""

    def __init__(self, batching: DynamicBatching | None) -> None:
        levels = batching.priority_levels if batching else 0
        self._configured = levels
        self._levels = max(levels, 1)
        default = batching.default_priority_level if batching else 0
        if levels and not 1 <= default <= levels:
            default = levels  # Triton's default: the lowest priority
        self._default_level = max(default, 1) - 1
        base = LevelPolicy.from_config(batching.default_queue_policy if batching else None)
        overrides = batching.priority_queue_policy if batching else {}
        self.policies = [
            LevelPolicy.from_config(overrides[i + 1]) if (i + 1) in overrides else base
            for i in range(self._levels)
        ]
        self._queues: list[deque[QueuedRequest]] = [deque() for _ in range(self._levels)]
        self._delayed: deque[QueuedRequest] = deque()
        self._count = [0] * self._levels

    @property
    def levels(self) -> int:
        """The configured ``priority_levels`` (0: none, every request has the one level)."""
        return self._configured

    def level_of(self, request: InferRequest) -> int:
        """The 0-based level for ``request``'s ``priority`` parameter (0 or absent: the
        default level). Without configured levels any priority means the one level, as in
        Triton. Call it before taking anything for the request: it may raise.

        Raises:
            InvalidInputError: a priority that is not an integer >= 0, or one above the
                configured ``priority_levels``.
        """
        priority = request.parameters.get("priority")
        if not priority:
            return self._default_level
        check_parameters({"priority": priority}, "request")
        if not self._configured:
            return self._default_level
        check_priority(request.parameters, self._configured, "request")
        return int(priority) - 1

    def push(self, item: QueuedRequest) -> None:
        """Queue ``item``.

        Raises:
            OverloadedError: its level already holds ``max_queue_size`` requests.
        """
        limit = self.policies[item.level].max_size
        if limit and self._count[item.level] >= limit:
            raise OverloadedError(f"queue is full ({limit} requests waiting)")
        self._queues[item.level].append(item)
        self._count[item.level] += 1

    def __len__(self) -> int:
        return sum(self._count) + len(self._delayed)

    def _drop_dead(self, now: float) -> None:
        """Forget cancelled requests; move timed-out DELAY requests behind all others."""
        for level, queue in enumerate(self._queues):
            delay = self.policies[level].delay_on_timeout
            if not any(i.cancelled or (delay and i.deadline <= now) for i in queue):
                continue
            kept: deque[QueuedRequest] = deque()
            for item in queue:
                if item.cancelled:
                    continue
                if delay and item.deadline <= now:
                    item.deadline = float("inf")
                    self._delayed.append(item)
                    continue
                kept.append(item)
            self._queues[level] = kept
            self._count[level] = len(kept)
        if any(i.cancelled for i in self._delayed):
            self._delayed = deque(i for i in self._delayed if not i.cancelled)

    def ordered(self, now: float) -> Iterator[QueuedRequest]:
        """Live requests in serving order."""
        self._drop_dead(now)
        for queue in self._queues:
            yield from queue
        yield from self._delayed

    def discard(self, item: QueuedRequest) -> None:
        """Forget ``item`` at once (its caller gave up), unless it was taken for a batch: it
        no longer counts against ``max_queue_size`` nor keeps the queue looking busy."""
        item.cancelled = True
        if item.started:
            return
        if item in self._delayed:
            self._delayed.remove(item)
            return
        queue = self._queues[item.level]
        if item in queue:
            queue.remove(item)
            self._count[item.level] -= 1

    def take(self, items: list[QueuedRequest]) -> None:
        """Remove ``items`` (just chosen for a batch) from the queue."""
        for item in items:
            item.started = True
            if item in self._delayed:
                self._delayed.remove(item)
            else:
                self._queues[item.level].remove(item)
                self._count[item.level] -= 1
