"""No refused or cancelled request holds an instance or a queue entry, on every scheduler path."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import InferRequest, Server
from dagserve.errors import InvalidInputError

pytestmark = pytest.mark.anyio

# An async native model: sleeps SLEEP_MS (the largest in the batch), echoes ID.
MODEL = """
import anyio

async def infer(inputs):
    await anyio.sleep(float(inputs["SLEEP_MS"].max()) / 1000)
    return {"ID": inputs["ID"]}
"""

SCHEDULERS = {
    "direct-scheduler": "",
    "batcher-direct-path": "dynamic_batching: {priority_levels: 2}",
    "batcher-queue": "dynamic_batching: {max_queue_delay_microseconds: 2000, priority_levels: 2}",
    "batcher-ordered": "dynamic_batching: {max_queue_delay_microseconds: 500, preserve_ordering: true}",
}


def make_repo(tmp_path: Path, scheduling: str, instances: int) -> Path:
    model = tmp_path / "slow"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    (model / "config.yaml").write_text(
        f"""
backend: python
max_batch_size: 4
instance_group: [{{count: {instances}, kind: KIND_CPU}}]
inputs:
  - {{name: ID, datatype: INT32, shape: [1]}}
  - {{name: SLEEP_MS, datatype: INT32, shape: [1]}}
outputs:
  - {{name: ID, datatype: INT32, shape: [1]}}
{scheduling}
"""
    )
    return tmp_path


def request(i: int, sleep_ms: int = 0, **parameters: object) -> InferRequest:
    return InferRequest(
        inputs={"ID": np.array([[i]], np.int32), "SLEEP_MS": np.array([[sleep_ms]], np.int32)},
        parameters=parameters,
    )


async def serves_all(server: Server, instances: int) -> None:
    """As many good requests as there are instances, at once, all answered (a held instance
    would leave one waiting until the deadline)."""
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = int((await server.infer("slow", "", request(i))).outputs["ID"][0, 0])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(instances):
                tg.start_soon(one, 100 + i)
    assert results == {100 + i: 100 + i for i in range(instances)}


@pytest.mark.parametrize("instances", [1, 2])
@pytest.mark.parametrize("scheduling", sorted(SCHEDULERS))
async def test_refused_requests_hold_nothing(tmp_path: Path, scheduling: str, instances: int) -> None:
    """Requests refused for a bad priority or timeout, more of them than there are instances,
    leave every instance free."""
    async with Server(model_repository=make_repo(tmp_path, SCHEDULERS[scheduling], instances)) as server:
        for bad in ({"priority": "high"}, {"priority": -1}, {"timeout": "soon"}, {"priority": 1.0}) * 3:
            with pytest.raises(InvalidInputError, match="parameter '(priority|timeout)'"):
                await server.infer("slow", "", request(0, **bad))
        await serves_all(server, instances)


@pytest.mark.parametrize("instances", [1, 2])
@pytest.mark.parametrize("scheduling", sorted(SCHEDULERS))
async def test_cancelled_callers_hold_nothing(tmp_path: Path, scheduling: str, instances: int) -> None:
    """Callers cancelled wherever they happen to be (waiting for an instance, queued, or
    executing) leave the model serving with every instance free."""
    async with Server(model_repository=make_repo(tmp_path, SCHEDULERS[scheduling], instances)) as server:
        async with anyio.create_task_group() as tg:
            for i in range(3 * instances + 2):

                async def cancelled(i: int = i) -> None:
                    with anyio.move_on_after(0.001 * i):
                        await server.infer("slow", "", request(i, sleep_ms=50))

                tg.start_soon(cancelled)
        await serves_all(server, instances)


async def test_cancelled_caller_leaves_the_queue_at_once(tmp_path: Path) -> None:
    """A queued request whose caller is cancelled stops counting against max_queue_size at
    once, before the batch loop next looks at the queue."""
    repo = make_repo(tmp_path, "dynamic_batching: {default_queue_policy: {max_queue_size: 1}}", 1)
    async with Server(model_repository=repo) as server, anyio.create_task_group() as tg:
        tg.start_soon(server.infer, "slow", "", request(1, sleep_ms=300))  # holds the instance
        await anyio.wait_all_tasks_blocked()
        scope = anyio.CancelScope()
        tg.start_soon(_queued_until_cancelled, server, scope)
        await anyio.wait_all_tasks_blocked()  # the second request waits in the queue
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        # The queue holds one request at most: this one fits only if the cancelled one left.
        with anyio.fail_after(30):
            assert (await server.infer("slow", "", request(3))).outputs["ID"][0, 0] == 3


async def _queued_until_cancelled(server: Server, scope: anyio.CancelScope) -> None:
    with scope:
        await server.infer("slow", "", request(2))
