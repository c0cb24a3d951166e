"""The pipeline executor core's task group: the first failure cancels the other steps and is
raised as itself, never wrapped in an exception group."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from dagserve import InvalidInputError, ModelExecutionError
from dagserve.engine.pipeline_runner import FirstFailure

pytestmark = pytest.mark.anyio


async def test_first_failure_cancels_the_others_and_is_raised_as_itself() -> None:
    """A step failing in the caller's task cancels steps running in other tasks; a later
    failure of another step does not replace the first."""
    cancelled = anyio.Event()
    started = anyio.Event()

    async def waits() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise ModelExecutionError("second") from None  # fails while being cancelled

    async def fails() -> None:
        await started.wait()
        raise InvalidInputError("first")

    with pytest.raises(InvalidInputError, match="first"):
        async with FirstFailure() as group:
            group.start_soon(waits)
            await group.run(fails)
    assert cancelled.is_set()


async def test_a_failure_in_a_started_task_cancels_the_caller_task() -> None:
    """A step failing in its own task cancels the chain running in the caller's task."""
    reached_end = False

    async def forever() -> None:
        nonlocal reached_end
        await anyio.sleep_forever()
        reached_end = True

    async def fails() -> None:
        raise InvalidInputError("from a task")

    with pytest.raises(InvalidInputError, match="from a task"):
        async with FirstFailure() as group:
            group.start_soon(fails)
            await group.run(forever)
    assert not reached_end


async def test_no_failure_waits_for_every_step() -> None:
    """Without failures the group returns once every step finished."""
    done: list[int] = []

    async def step(i: int) -> None:
        await anyio.lowlevel.checkpoint()
        done.append(i)

    async with FirstFailure() as group:
        for i in range(5):
            group.start_soon(step, i)
        await group.run(step, 5)
    assert sorted(done) == [0, 1, 2, 3, 4, 5]
