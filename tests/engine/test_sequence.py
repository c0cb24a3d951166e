"""The sequence batcher: per-sequence implicit state, control inputs, ordering and expiry."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from dagserve import InferRequest, InvalidInputError, Server

pytestmark = pytest.mark.anyio

REPO = Path(__file__).parents[1] / "repos" / "sequence"


def step(x: int, seq: int | str, *, start: bool = False, end: bool = False) -> InferRequest:
    return InferRequest(
        inputs={"X": np.array([[x]], np.int32)},
        parameters={"sequence_id": seq, "sequence_start": start, "sequence_end": end},
    )


async def test_state_is_kept_per_sequence_under_interleaving() -> None:
    """Two sequences interleaved request by request each keep their own running sum."""
    async with Server(model_repository=REPO) as server:
        totals: dict[int, list[int]] = {11: [], 22: []}
        for i in range(4):
            for seq, base in ((11, 1), (22, 100)):
                r = await server.infer("accumulate", "", step(base, seq, start=i == 0, end=i == 3))
                totals[seq].append(int(r.outputs["TOTAL"][0, 0]))
                assert int(r.outputs["CORR"][0, 0]) == seq
    assert totals == {11: [1, 2, 3, 4], 22: [100, 200, 300, 400]}


async def test_control_inputs_and_reset_on_start() -> None:
    async with Server(model_repository=REPO) as server:
        first = await server.infer("accumulate", "", step(5, 7, start=True))
        last = await server.infer("accumulate", "", step(5, 7, end=True))
        again = await server.infer("accumulate", "", step(1, 7, start=True))
    assert first.outputs["FLAGS"].tolist() == [[1, 0]]
    assert last.outputs["FLAGS"].tolist() == [[0, 1]]
    assert int(last.outputs["TOTAL"][0, 0]) == 10
    assert int(again.outputs["TOTAL"][0, 0]) == 1  # START resets the state
    assert "TOTAL_OUT" not in again.outputs  # state outputs stay inside the server


async def test_concurrent_sequences_batch_together(tmp_path: Path) -> None:
    """Six sequences stepping at once share each execute call: with max_batch_size 6 and a
    queue delay far longer than the test, a batch is sent only once all six have arrived."""
    import shutil

    shutil.copytree(REPO, tmp_path / "repo")
    config = tmp_path / "repo" / "accumulate" / "config.pbtxt"
    text = config.read_text()
    assert "max_batch_size: 8" in text and "max_queue_delay_microseconds: 2000 " in text
    config.write_text(
        text.replace("max_batch_size: 8", "max_batch_size: 6").replace(
            "max_queue_delay_microseconds: 2000 ", "max_queue_delay_microseconds: 600000000 "
        )
    )
    async with Server(model_repository=tmp_path / "repo") as server:
        batches: list[int] = []

        async def run(seq: int) -> None:
            for i in range(3):
                r = await server.infer("accumulate", "", step(seq, seq, start=i == 0, end=i == 2))
                batches.append(int(r.outputs["BATCH"][0, 0]))
                assert int(r.outputs["TOTAL"][0, 0]) == seq * (i + 1)

        async with anyio.create_task_group() as tg:
            for seq in range(1, 7):
                tg.start_soon(run, seq)
    assert batches == [6] * 18


async def test_errors_name_the_sequence_problem() -> None:
    async with Server(model_repository=REPO) as server:
        with pytest.raises(InvalidInputError, match="needs a non-zero 'sequence_id'"):
            await server.infer("accumulate", "", InferRequest(inputs={"X": np.array([[1]], np.int32)}))
        with pytest.raises(InvalidInputError, match="sequence 99 has no START request"):
            await server.infer("accumulate", "", step(1, 99))
        await server.infer("accumulate", "", step(1, 5, start=True, end=True))
        with pytest.raises(InvalidInputError, match="sequence 5 has no START"):
            await server.infer("accumulate", "", step(1, 5))
        with pytest.raises(InvalidInputError, match="is a string"):
            await server.infer("accumulate", "", step(1, "abc", start=True))


async def test_idle_sequences_expire(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(REPO, tmp_path / "repo")
    config = tmp_path / "repo" / "accumulate" / "config.pbtxt"
    config.write_text(config.read_text().replace("2000000", "50000"))
    async with Server(model_repository=tmp_path / "repo") as server:
        await server.infer("accumulate", "", step(1, 3, start=True))
        await anyio.sleep(0.2)  # 4x the idle limit (a lower bound: never early), on the reaper's loop
        with pytest.raises(InvalidInputError, match="idle past max_sequence_idle_microseconds"):
            await server.infer("accumulate", "", step(1, 3))
