"""Dynamic batcher behaviour: priorities, queue limits, timeouts and response ordering.

The model holds request 0 on a file gate (SLEEP_MS = -1) until the test releases it, and the
test waits until the server counts the other requests in flight before it acts, so every
ordering below is decided by the batcher, never by how fast this machine happens to be."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import InferRequest, InvalidInputError, OverloadedError, Server
from dagserve.errors import RequestTimeoutError as QueueTimeout
from dagserve.testing import FileGate, in_flight, wait_until_async

pytestmark = pytest.mark.anyio

HOLD = -1  # SLEEP_MS that holds the call until the gate is released

# An async native model: echoes ID after sleeping SLEEP_MS (per batch, the largest asked), or,
# with SLEEP_MS = -1, after the test releases the gate.
MODEL = """
import anyio
import numpy as np
from pathlib import Path

GATE = Path({gate!r})

async def infer(inputs):
    ms = int(inputs["SLEEP_MS"].min())
    if ms < 0:
        (GATE / "started").touch()
        while not (GATE / "release").exists():
            await anyio.sleep(0.005)
    else:
        await anyio.sleep(float(inputs["SLEEP_MS"].max()) / 1000)
    return {{"ID": inputs["ID"]}}
"""


def make_repo(tmp_path: Path, batching: str, *, max_batch_size: int = 1, instances: int = 1) -> tuple[Path, FileGate]:
    gate = FileGate(tmp_path / "gate")
    model = tmp_path / "repo" / "slow"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL.format(gate=str(gate.path)))
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
    return tmp_path / "repo", gate


def request(i: int, sleep_ms: int = 0, **parameters: object) -> InferRequest:
    return InferRequest(
        inputs={"ID": np.array([[i]], np.int32), "SLEEP_MS": np.array([[sleep_ms]], np.int32)},
        parameters=parameters,
    )


async def until_in_flight(server: Server, count: int) -> None:
    await wait_until_async(lambda: in_flight(server, "slow") == count, what=f"{count} requests in flight")


async def test_higher_priority_overtakes(tmp_path: Path) -> None:
    """With the instance busy, a priority-1 request queued last is served before priority-2 ones."""
    repo, gate = make_repo(tmp_path, "{priority_levels: 2, default_priority_level: 2}")
    order: list[int] = []
    async with Server(model_repository=repo) as server:

        async def call(i: int, sleep_ms: int = 0, **params: object) -> None:
            r = await server.infer("slow", "", request(i, sleep_ms, **params))
            order.append(int(r.outputs["ID"][0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, HOLD)
            await gate.wait_started_async()
            for i in (1, 2, 3):
                tg.start_soon(call, i)
            await until_in_flight(server, 4)
            tg.start_soon(functools.partial(call, 9, 0, priority=1))
            await until_in_flight(server, 5)
            gate.release()
    assert order[0] == 0
    assert order[1] == 9
    assert sorted(order[2:]) == [1, 2, 3]


async def test_full_queue_rejects_at_once(tmp_path: Path) -> None:
    """A request beyond max_queue_size is refused while the instance is still busy (it does
    not wait for room), and the queued requests are served."""
    repo, gate = make_repo(tmp_path, "{default_queue_policy: {max_queue_size: 2}}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, HOLD))
            await gate.wait_started_async()
            tg.start_soon(server.infer, "slow", "", request(1))
            tg.start_soon(server.infer, "slow", "", request(2))
            await until_in_flight(server, 3)
            try:
                # The gate stays shut: waiting for room would never end.
                with anyio.fail_after(30), pytest.raises(OverloadedError, match="queue is full"):
                    await server.infer("slow", "", request(3))
            finally:
                gate.release()
        stats = server.statistics("slow")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 3


async def test_full_queue_rejection_counts_as_a_failure(tmp_path: Path) -> None:
    """A request refused because the queue is full counts as a failed request."""
    repo, gate = make_repo(tmp_path, "{default_queue_policy: {max_queue_size: 1}}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, HOLD))
            await gate.wait_started_async()
            tg.start_soon(server.infer, "slow", "", request(1))
            await until_in_flight(server, 2)
            try:
                with pytest.raises(OverloadedError):
                    await server.infer("slow", "", request(2))
            finally:
                gate.release()
        stats = server.statistics("slow")["model_stats"][0]["inference_stats"]
    assert (stats["success"]["count"], stats["fail"]["count"]) == (2, 1)


async def test_queue_timeout_rejects(tmp_path: Path) -> None:
    """A request still queued after default_timeout_microseconds fails; one that ran does not."""
    repo, gate = make_repo(tmp_path, "{default_queue_policy: {default_timeout_microseconds: 50000}}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            first: list[int] = []

            async def held() -> None:
                first.append(int((await server.infer("slow", "", request(0, HOLD))).outputs["ID"][0, 0]))

            tg.start_soon(held)
            await gate.wait_started_async()
            try:
                with pytest.raises(QueueTimeout, match="timed out after 50000 µs in the queue"):
                    await server.infer("slow", "", request(1))
            finally:
                gate.release()
        assert first == [0]  # ran far longer than 50 ms, but was not queued that long
        assert (await server.infer("slow", "", request(2))).outputs["ID"][0, 0] == 2


async def test_request_timeout_override(tmp_path: Path) -> None:
    """allow_timeout_override lets a request's `timeout` parameter (µs) replace the default."""
    repo, gate = make_repo(
        tmp_path, "{default_queue_policy: {default_timeout_microseconds: 600000000, allow_timeout_override: true}}"
    )
    async with Server(model_repository=repo) as server, anyio.create_task_group() as tg:
        tg.start_soon(server.infer, "slow", "", request(0, HOLD))
        await gate.wait_started_async()
        try:
            # 30 ms instead of the default 10 minutes (the bound is only against a hang).
            with anyio.fail_after(60), pytest.raises(QueueTimeout, match="timed out after 30000 µs"):
                await server.infer("slow", "", request(1, timeout=30000))
        finally:
            gate.release()


async def test_delay_action_serves_late_requests_last(tmp_path: Path) -> None:
    """timeout_action DELAY keeps a timed-out request but serves it after the requests of its
    level that have not timed out, even ones queued after it."""
    repo, gate = make_repo(
        tmp_path,
        "{default_queue_policy: {timeout_action: DELAY, default_timeout_microseconds: 10000, "
        "allow_timeout_override: true}}",
    )
    order: list[int] = []
    async with Server(model_repository=repo) as server:

        async def call(i: int, sleep_ms: int = 0, **params: object) -> None:
            r = await server.infer("slow", "", request(i, sleep_ms, **params))
            order.append(int(r.outputs["ID"][0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, HOLD)
            await gate.wait_started_async()
            tg.start_soon(call, 1)  # times out (10 ms) while the instance is held -> delayed
            await until_in_flight(server, 2)
            # Same level, queued later, with a timeout it will not reach.
            tg.start_soon(functools.partial(call, 2, 0, timeout=600_000_000))
            await until_in_flight(server, 3)
            await anyio.sleep(0.05)  # a lower bound, never early: request 1 is now past its 10 ms
            gate.release()
    assert order == [0, 2, 1]


@pytest.mark.parametrize("preserve", [False, True])
async def test_preserve_ordering(tmp_path: Path, preserve: bool) -> None:
    """With two instances a fast batch overtakes a slow one, unless preserve_ordering is set."""
    repo, gate = make_repo(tmp_path, f"{{preserve_ordering: {str(preserve).lower()}}}", instances=2)
    order: list[int] = []
    async with Server(model_repository=repo) as server:

        async def call(i: int, sleep_ms: int) -> None:
            r = await server.infer("slow", "", request(i, sleep_ms))
            order.append(int(r.outputs["ID"][0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, HOLD)
            await gate.wait_started_async()
            tg.start_soon(call, 1, 0)
            try:
                if preserve:
                    # Request 1 has run on the other instance; its answer waits for request 0's.
                    await wait_until_async(lambda: server.statistics("slow")["model_stats"][0]["execution_count"] == 1)
                    await anyio.wait_all_tasks_blocked()
                    assert order == []
                else:
                    await wait_until_async(lambda: order == [1], what="the fast request answered first")
            finally:
                gate.release()
    assert order == ([0, 1] if preserve else [1, 0])


async def test_cancelled_caller_leaves_the_queue(tmp_path: Path) -> None:
    """A caller cancelled while queued is never executed, and the batcher keeps serving."""
    repo, gate = make_repo(tmp_path, "{}")
    async with Server(model_repository=repo) as server:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.infer, "slow", "", request(0, HOLD))
            await gate.wait_started_async()
            try:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as caller:
                        caller.start_soon(server.infer, "slow", "", request(1))
                        await until_in_flight(server, 2)
                        scope.cancel()
                assert scope.cancelled_caught
                await until_in_flight(server, 1)
            finally:
                gate.release()
        assert (await server.infer("slow", "", request(2))).outputs["ID"][0, 0] == 2
        stats = server.statistics("slow")["model_stats"][0]
    assert stats["execution_count"] == 2


async def test_bad_priority_is_rejected(tmp_path: Path) -> None:
    repo, _ = make_repo(tmp_path, "{priority_levels: 2}")
    async with Server(model_repository=repo) as server:
        with pytest.raises(InvalidInputError, match=r"priority 5 is out of range \(1 to 2\)"):
            await server.infer("slow", "", request(0, priority=5))
