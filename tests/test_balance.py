"""dagserve.balance: the placement rule over the counts of two workers sharing one directory
(both sides in this process; tests/test_workers.py runs it with real workers)."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagserve.balance import ConnectionBalance


@pytest.fixture
def pair() -> Iterator[tuple[ConnectionBalance, ConnectionBalance]]:
    directory = Path(tempfile.mkdtemp(prefix="dgs-", dir="/tmp"))
    first, second = ConnectionBalance(directory, 0, 2), ConnectionBalance(directory, 1, 2)
    for balance in (first, second):
        balance.take("http", lambda sock: sock.close())
    yield first, second
    shutil.rmtree(directory, ignore_errors=True)


def test_a_worker_hands_on_only_while_it_holds_more_than_another(
    pair: tuple[ConnectionBalance, ConnectionBalance],
) -> None:
    """mine > min hands on, mine == min keeps; a port is counted apart from the others."""
    first, second = pair
    assert first.target("http") is None  # 0 and 0
    first.opened("http")
    assert second.target("http") is None  # 0 against 1: keep
    assert first.target("grpc") is None  # nothing taken on grpc: nowhere to hand it
    assert first.target("http") == 1
    assert first.statistics()["http"] == [1, 0]


def test_a_handoff_in_flight_counts_once_whether_or_not_the_receiver_shows_it_yet(
    pair: tuple[ConnectionBalance, ConnectionBalance],
) -> None:
    """While a handoff to a worker is unanswered, the next choice counts that worker one up,
    and not twice once the receiver has published its count (the race that left 3:1)."""
    first, second = pair
    first.opened("http")
    first.opened("http")  # 2 against 0
    assert first.target("http") == 1  # reserved: 2 against 1 now
    second.opened("http")  # the receiver took it and published 1, before its answer came
    assert first.target("http") == 1  # 2 against 1, not 2 against 2: the next goes there too
    assert first.target("http") is None  # 2 against 2 (both unanswered)
    first.closed("http")
    first.closed("http")  # 0 against 1 and its handoffs in flight
    assert second.target("http") == 0


def test_a_stopping_worker_takes_nothing(pair: tuple[ConnectionBalance, ConnectionBalance]) -> None:
    """A worker whose frontend stopped taking connections is left out, and refuses a handoff."""
    first, second = pair
    first.opened("http")
    first.opened("http")
    second.take("http", None)
    assert first.target("http") is None
    assert first.statistics()["http"] == [2, -1]


@pytest.mark.anyio
async def test_a_refused_or_undeliverable_handoff_is_served_by_the_sender(
    pair: tuple[ConnectionBalance, ConnectionBalance],
) -> None:
    """hand_off says False when the receiver is not listening (dead, restarting)."""
    first, _ = pair
    left, right = socket.socketpair()
    with left, right:
        first.opened("http")
        assert first.target("http") == 1
        assert await first.hand_off(1, "http", left) is False
