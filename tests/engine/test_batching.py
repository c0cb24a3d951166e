"""Dynamic batcher behaviour: priorities, queue limits, timeouts and response ordering."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import InferRequest, OverloadedError, Server
from dagserve.errors import TimeoutError as QueueTimeout

pytestmark = pytest.mark.anyio

# An async native model: sleeps SLEEP_MS (per batch, the largest asked), echoes ID.
MODEL = '''
import anyio
import numpy as np

async def infer(inputs):
    await anyio.sleep(float(inputs["SLEEP_MS"].max()) / 1000)
    return {"ID": inputs["ID"]}
'''


def make_repo(tmp_path: Path, batching: str, *, max_batch_size: int = 1, instances: int = 1) -> Path:
    model = tmp_path / "slow"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    (model / "config.yaml").write_text(
        f"""
backend: python
max_batch_size: {max_batch_size}
instance_group: [{{count: {instances}, kind: KIND_CPU}}]
inputs:
  - {{name: ID, datatype: INT32, shape: [1]}}
  - {{name: SLEEP_MS, datatype: INT32, shape: [1]}}
outputs:
  - {{name: ID, datatype: INT32, shape: [1]}}
dynamic_batching: {batching}
"""
    )
    return tmp_path


def request(i: int, sleep_ms: int = 0, **parameters: object) -> InferRequest:
    return InferRequest(
        inputs={"ID": np.array([[i]], np.int32), "SLEEP_MS": np.array([[sleep_ms]], np.int32)},
        parameters=parameters,
    )


async def test_higher_priority_overtakes(tmp_path: Path) -> None:
    """With the instance busy, a priority-1 request queued last is served before priority-2 ones."""
    repo = make_repo(tmp_path, "{priority_levels: 2, default_priority_level: 2}")
    order: list[int] = []
    async with Server(model_repository=repo) as server:

        async def call(i: int, sleep_ms: int = 0, **params: object) -> None:
            r = await server.infer("slow", "", request(i, sleep_ms, **params))
            order.append(int(r.outputs["ID"][0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, 100)
            await anyio.sleep(0.02)  # let request 0 occupy the only instance
            for i in (1, 2, 3):
                tg.start_soon(call, i)
            await anyio.sleep(0.01)
            tg.start_soon(functools.partial(call, 9, 0, priority=1))
    assert order[0] == 0
    assert order[1] == 9
    assert sorted(order[2:]) == [1, 2, 3]


async def test_full_queue_rejects_at_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "{default_queue_policy: {max_queue_size: 2}}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, 200))
            await anyio.sleep(0.02)
            tg.start_soon(server.infer, "slow", "", request(1))
            tg.start_soon(server.infer, "slow", "", request(2))
            await anyio.sleep(0.01)
            with anyio.fail_after(0.1), pytest.raises(OverloadedError, match="queue is full"):
                await server.infer("slow", "", request(3))
        stats = server.statistics("slow")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 3


async def test_queue_timeout_rejects(tmp_path: Path) -> None:
    """A request still queued after default_timeout_microseconds fails; one that ran does not."""
    repo = make_repo(tmp_path, "{default_queue_policy: {default_timeout_microseconds: 50000}}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, 300))
            await anyio.sleep(0.02)
            with pytest.raises(QueueTimeout, match="timed out after 50000 µs in the queue"):
                await server.infer("slow", "", request(1))
        assert (await server.infer("slow", "", request(2))).outputs["ID"][0, 0] == 2


async def test_request_timeout_override(tmp_path: Path) -> None:
    """allow_timeout_override lets a request's `timeout` parameter (µs) replace the default."""
    repo = make_repo(
        tmp_path, "{default_queue_policy: {default_timeout_microseconds: 10000000, allow_timeout_override: true}}"
    )
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, 300))
            await anyio.sleep(0.02)
            with anyio.fail_after(0.25), pytest.raises(QueueTimeout):
                await server.infer("slow", "", request(1, timeout=30000))


async def test_delay_action_serves_late_requests_last(tmp_path: Path) -> None:
    """timeout_action DELAY keeps a timed-out request but serves it after the others."""
    repo = make_repo(
        tmp_path,
        "{priority_levels: 2, default_priority_level: 2, priority_queue_policy: "
        "{2: {timeout_action: DELAY, default_timeout_microseconds: 10000}}}",
    )
    order: list[int] = []
    async with Server(model_repository=repo) as server:

        async def call(i: int, sleep_ms: int = 0, **params: object) -> None:
            r = await server.infer("slow", "", request(i, sleep_ms, **params))
            order.append(int(r.outputs["ID"][0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, 100)
            await anyio.sleep(0.02)
            tg.start_soon(call, 1)  # level 2, will time out while waiting -> delayed
            await anyio.sleep(0.05)
            tg.start_soon(functools.partial(call, 2, 0, priority=1))
    assert order == [0, 2, 1]


@pytest.mark.parametrize("preserve", [False, True])
async def test_preserve_ordering(tmp_path: Path, preserve: bool) -> None:
    """With two instances a fast batch overtakes a slow one, unless preserve_ordering is set."""
    repo = make_repo(tmp_path, f"{{preserve_ordering: {str(preserve).lower()}}}", instances=2)
    order: list[int] = []
    async with Server(model_repository=repo) as server:

        async def call(i: int, sleep_ms: int) -> None:
            r = await server.infer("slow", "", request(i, sleep_ms))
            order.append(int(r.outputs["ID"][0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, 150)
            await anyio.sleep(0.02)
            tg.start_soon(call, 1, 0)
    assert order == ([0, 1] if preserve else [1, 0])


async def test_cancelled_caller_leaves_the_queue(tmp_path: Path) -> None:
    """A caller cancelled while queued is never executed, and the batcher keeps serving."""
    repo = make_repo(tmp_path, "{}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, 100))
            await anyio.sleep(0.02)
            with anyio.move_on_after(0.02):
                await server.infer("slow", "", request(1))
        assert (await server.infer("slow", "", request(2))).outputs["ID"][0, 0] == 2
        stats = server.statistics("slow")["model_stats"][0]
    assert stats["execution_count"] == 2


async def test_bad_priority_is_rejected(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, "{priority_levels: 2}")
    async with Server(model_repository=repo) as server:
        with pytest.raises(Exception, match=r"priority 5 is out of range \(1 to 2\)"):
            await server.infer("slow", "", request(0, priority=5))
