"""The worker thread of one instance: runs calls in order off the loop, finishes what was
submitted before close, refuses (never strands) what comes after, and survives cancellation."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest

from dagserve.engine.instances import InstanceThread
from dagserve.errors import ModelNotReadyError

pytestmark = pytest.mark.anyio


async def test_calls_run_in_order_on_one_thread_off_the_loop() -> None:
    """Every call runs on the same thread, not the loop's, and results come back in order."""
    worker = InstanceThread("t", "model 'm'")
    try:
        idents = [await worker.run(threading.get_ident) for _ in range(5)]
        assert len(set(idents)) == 1 and idents[0] != threading.get_ident()
        assert await worker.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await worker.run(lambda: 1 / 0)
        assert await worker.run(threading.get_ident) == idents[0]  # an exception does not kill it
    finally:
        await anyio.to_thread.run_sync(worker.close)


async def test_call_after_close_fails_at_once() -> None:
    """A call submitted after close is refused with ModelNotReadyError instead of waiting for ever."""
    worker = InstanceThread("t", "model 'm'")
    await worker.run(int)
    await anyio.to_thread.run_sync(worker.close)
    with anyio.fail_after(30), pytest.raises(ModelNotReadyError, match="model 'm'"):
        await worker.run(int)


async def test_close_finishes_calls_already_submitted() -> None:
    """close() waits for a call in progress, which still delivers its result."""
    worker = InstanceThread("t", "model 'm'")
    entered, release = threading.Event(), threading.Event()

    def blocking() -> str:
        entered.set()
        release.wait(60)
        return "done"

    results: list[str] = []

    async def call() -> None:
        results.append(await worker.run(blocking))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.to_thread.run_sync(entered.wait, 30)
        closing = threading.Thread(target=worker.close)
        closing.start()
        release.set()
    await anyio.to_thread.run_sync(closing.join, 30)
    assert results == ["done"] and not closing.is_alive()


async def test_cancelled_caller_waits_for_the_call_to_finish() -> None:
    """A cancelled caller returns only once the thread is done with its call (never abandoned)."""
    worker = InstanceThread("t", "model 'm'")
    entered, release = threading.Event(), threading.Event()
    finished = threading.Event()

    def blocking() -> None:
        entered.set()
        release.wait(60)
        finished.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, blocking)
            await anyio.to_thread.run_sync(entered.wait, 30)
            # Released from elsewhere a little later: an abandoned call would let the group
            # exit before ``finished`` is set (a slow machine can only hide that, not fake it).
            threading.Timer(0.2, release.set).start()
            tg.cancel_scope.cancel()
        assert finished.is_set()
    finally:
        await anyio.to_thread.run_sync(worker.close)
