"""The frames of forwarded requests between two workers (``dagserve.forwarding``), both ends in
one process over a real Unix socket pair: tensors cross whole in the shared buffer or through
the socket, a view the reader still holds is never overwritten, buffers grow, and no buffer
file stays in the directory."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import numpy as np
import pytest

from dagserve.forwarding import Connection, Tensor, remove_buffers
from dagserve.types import DataType

pytestmark = pytest.mark.anyio

MiB = 1 << 20


@pytest.fixture
async def ends(tmp_path: Path) -> AsyncIterator[tuple[Connection, Connection]]:
    """(requester, owner): two connected ends sharing the private directory ``tmp_path``."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    requester = Connection(await anyio.abc.UNIXSocketStream.from_socket(a), tmp_path, "1-11", shm_min_bytes=4096)
    owner = Connection(await anyio.abc.UNIXSocketStream.from_socket(b), tmp_path, "0-10", shm_min_bytes=4096)
    yield requester, owner
    await requester.aclose()
    await owner.aclose()


async def roundtrip(sender: Connection, receiver: Connection, tensors: list[Tensor], **header: object) -> dict:
    frame = sender.pack(dict(header), tensors)
    async with anyio.create_task_group() as tg:  # a frame larger than the socket's buffer
        tg.start_soon(sender.send, frame)
        received = await receiver.receive()
    return received.take()


def mixed(seed: int) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    words = np.array([b"x" * int(n) for n in rng.integers(0, 300, 4000)], dtype=object).reshape(40, 100)
    return [
        ("F32", DataType.FP32, rng.random((512, 1024), np.float32)),  # 2 MiB
        ("I64", DataType.INT64, rng.integers(-(2**40), 2**40, (3, 65536))),  # 1.5 MiB
        ("BOOL", DataType.BOOL, rng.random(10000) > 0.5),
        ("BF16", DataType.BF16, rng.integers(0, 2**16, (8, 1024), dtype=np.uint16)),
        ("BYTES", DataType.BYTES, words),  # ~600 KB
        ("SMALL", DataType.INT32, np.arange(7, dtype=np.int32)),  # inline
        ("STRIDED", DataType.FP64, rng.random((300, 400))[::2, ::3]),  # not contiguous
        ("BIG_ENDIAN", DataType.INT32, np.arange(5000, dtype=">i4")),
        ("EMPTY", DataType.FP32, np.zeros((0, 4), np.float32)),
    ]


def check(got: dict, sent: list[Tensor]) -> None:
    assert list(got) == [name for name, _, _ in sent]
    for name, _, array in sent:
        assert got[name].shape == array.shape, name
        if array.dtype == object:
            assert got[name].tolist() == array.tolist(), name
        else:
            np.testing.assert_array_equal(got[name], array, err_msg=name)


async def test_tensors_of_every_kind_cross_both_ways(ends: tuple[Connection, Connection], tmp_path: Path) -> None:
    """Large tensors go through the shared buffer as views (read-only, aligned), small ones
    through the socket; every dtype, a strided and a big-endian array arrive equal, and the
    buffer files are gone from the directory once the reader has mapped them."""
    requester, owner = ends
    for seed in range(3):
        sent = mixed(seed)
        got = await roundtrip(requester, owner, sent, model="m")
        check(got, sent)
        buffer = got["F32"].base  # the array over the whole mapping
        assert buffer is got["I64"].base and buffer is got["STRIDED"].base and not got["F32"].flags.writeable
        assert got["SMALL"].base is not buffer  # from the socket
        assert all(got[n].ctypes.data % 64 == 0 for n in ("F32", "I64", "BOOL", "BF16", "STRIDED"))
        del buffer
        del got
        answer = mixed(100 + seed)
        check(await roundtrip(owner, requester, answer, final=True), answer)
        assert list(tmp_path.iterdir()) == []
    assert requester.buffers_made == owner.buffers_made == 1  # reused while nothing held a view


async def test_a_view_still_held_is_never_overwritten(ends: tuple[Connection, Connection]) -> None:
    """The owner's response cache (or an identity model's output) may hold a view of a request's
    input after the answer: the next request gets a new buffer, and the held view keeps its
    values; once nothing holds one, the buffer is reused."""
    requester, owner = ends
    first = np.full(MiB, 1, np.uint8)
    kept = await roundtrip(requester, owner, [("X", DataType.UINT8, first)])
    await owner.send(owner.pack({"final": True}, []))  # answered while the owner holds X: retire
    await requester.receive()
    second = await roundtrip(requester, owner, [("X", DataType.UINT8, np.full(MiB, 2, np.uint8))])
    assert (kept["X"] == 1).all(), "the held view was overwritten"
    assert (second["X"] == 2).all()
    assert requester.buffers_made == 2
    del kept, second
    await owner.send(owner.pack({"final": True}, []))
    await requester.receive()
    third = await roundtrip(requester, owner, [("X", DataType.UINT8, np.full(MiB, 3, np.uint8))])
    assert (third["X"] == 3).all() and requester.buffers_made == 2


async def test_a_response_the_frontend_still_encodes_survives_the_next_request(
    ends: tuple[Connection, Connection],
) -> None:
    """The forwarding worker may still encode a response when the connection carries the next
    request: its request says so, and the owner writes that answer into a new buffer."""
    requester, owner = ends
    await roundtrip(requester, owner, [])
    encoding = await roundtrip(owner, requester, [("Y", DataType.FP32, np.full(MiB, 1.0, np.float32))])
    await roundtrip(requester, owner, [])
    answer = await roundtrip(owner, requester, [("Y", DataType.FP32, np.full(MiB, 2.0, np.float32))])
    assert (encoding["Y"] == 1.0).all() and (answer["Y"] == 2.0).all()
    assert owner.buffers_made == 2


async def test_the_buffer_grows_and_the_peer_follows(ends: tuple[Connection, Connection]) -> None:
    """A frame larger than the buffer makes a bigger one, named in its header."""
    requester, owner = ends
    for size in (MiB // 2, 3 * MiB, 17 * MiB, MiB):
        sent = [("X", DataType.INT8, np.arange(size, dtype=np.int8))]
        got = await roundtrip(requester, owner, sent)
        check(got, sent)
        del got
        await roundtrip(owner, requester, [])
    assert requester.buffers_made == 3  # 1 MiB, 4 MiB, 32 MiB; the last one fits


async def test_inline_sends_everything_through_the_socket(ends: tuple[Connection, Connection]) -> None:
    """A stream's frames (``inline``) and tensors under ``shm_min_bytes`` make no buffer."""
    requester, owner = ends
    sent = mixed(7)
    frame = requester.pack({}, sent, inline=True)
    assert len(frame.payload) > 4 * MiB
    async with anyio.create_task_group() as tg:
        tg.start_soon(requester.send, frame)
        check((await owner.receive()).take(), sent)
    assert requester.buffers_made == 0


async def test_a_wrong_datatype_names_the_output(ends: tuple[Connection, Connection]) -> None:
    requester, _ = ends
    with pytest.raises(Exception, match="output 'Y' is declared FP32 but the model produced int64"):
        requester.pack({}, [("Y", DataType.FP32, np.zeros(MiB, np.int64))])


async def test_closing_removes_a_file_the_peer_never_opened(tmp_path: Path) -> None:
    """A buffer made for a frame that never reached its reader is removed when its writer
    closes; a killed writer's leftovers are removed by its successor (``remove_buffers``)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    end = Connection(await anyio.abc.UNIXSocketStream.from_socket(a), tmp_path, "1-11", shm_min_bytes=1)
    end.pack({}, [("X", DataType.FP32, np.ones(10, np.float32))])
    assert [p.name for p in tmp_path.iterdir()] == ["forward-1-11-" + p.name.rsplit("-", 1)[1] for p in tmp_path.iterdir()]
    await end.aclose()
    b.close()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "forward-1-99-0").touch()
    (tmp_path / "forward-2-98-0").touch()
    remove_buffers(tmp_path, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["forward-2-98-0"]
