"""The dynamic batcher's decision is a pure function: tested here without sleeping."""

from __future__ import annotations

import math

from dagserve.engine.scheduler import BatchPolicy, Flush, Wait, decide

POLICY = BatchPolicy(max_batch_size=8, max_queue_delay=0.010)


def test_empty_queue_waits_forever() -> None:
    assert decide([], oldest_age=0.0, policy=POLICY) == Wait(math.inf)


def test_full_batch_flushes_at_once() -> None:
    """A batch that reaches max_batch_size goes immediately, whatever the delay."""
    assert decide([4, 4, 1], oldest_age=0.0, policy=POLICY) == Flush(2)
    assert decide([8], oldest_age=0.0, policy=POLICY) == Flush(1)


def test_partial_batch_waits_for_the_delay() -> None:
    assert decide([1, 2], oldest_age=0.004, policy=POLICY) == Wait(0.006)


def test_partial_batch_flushes_after_the_delay() -> None:
    assert decide([1, 2], oldest_age=0.010, policy=POLICY) == Flush(2)


def test_zero_delay_flushes_whatever_is_queued() -> None:
    policy = BatchPolicy(max_batch_size=8)
    assert decide([1], oldest_age=0.0, policy=policy) == Flush(1)


def test_oversized_head_still_flushes_alone() -> None:
    """A request larger than the rest of the batch never blocks the queue."""
    assert decide([3, 6], oldest_age=0.0, policy=POLICY) == Flush(1)


def test_largest_preferred_size_flushes_early() -> None:
    policy = BatchPolicy(max_batch_size=16, preferred_batch_sizes=(2, 4), max_queue_delay=1.0)
    assert decide([1, 1, 1, 1, 1], oldest_age=0.0, policy=policy) == Flush(4)


def test_after_delay_prefers_a_preferred_size() -> None:
    policy = BatchPolicy(max_batch_size=16, preferred_batch_sizes=(2, 4), max_queue_delay=0.001)
    assert decide([1, 1, 1], oldest_age=0.002, policy=policy) == Flush(2)
