"""How a forwarded request's tensors cross from one worker process to another (``--workers N``).

A request for a model another worker serves (placement ``one``, or handed on by spreading)
goes whole over a Unix socket, one request at a time on each pooled :class:`Connection`. A
*frame* is a 4-byte little-endian header length, a JSON header, then the bytes of the tensors
sent inline. The header lists each tensor as ``[name, datatype, shape, byte count, where]``:

* ``where`` None: **inline**, after the header, in list order, in the KServe binary layout of
  :mod:`dagserve.tensor_bytes`. Tensors under ``shm_min_bytes`` and every tensor of a stream
  (a decoupled model's request and responses) go so.
* ``where`` an integer: at that offset in the sender's **shared buffer**. Each direction of a
  connection has one: a file in the workers' private directory (mode 0700) that its writer
  creates, sizes and maps, and names in the header of the first frame that uses it
  (``"buffer": {"name", "size"}``). The reader maps it read-only and unlinks it at once, so
  the file is gone from the directory as soon as both sides map it, and nothing is left
  behind when either process is killed; the memory is freed when the last mapping goes. A
  fixed-size tensor is read as a read-only numpy view of the mapping (no copy); BYTES are
  decoded into ``bytes`` elements (a copy), as from the socket.
* ``where`` a string: a torch **CUDA** tensor shared by CUDA IPC (torch's
  ``reduce_tensor``: a handle of the sender's memory, its offset, an event to wait for, and
  torch's cross-process reference count), opened as a tensor on the same GPU: no copy to the
  host and back. The sender holds the tensor until the peer's next frame (or the connection's
  close); torch's reference count keeps its memory from reuse while the receiver still holds
  the tensor after that. Other device tensors (CuPy) are copied to the host first
  (:func:`~dagserve.types.to_host`) and cross as host tensors. Not yet run on a GPU.

**Lifetimes.** The writer of a buffer writes into it only when it sends a frame, which the
protocol orders after the reader's use of the previous one: worker 0 writes a response after
the request's run, the forwarding worker writes the next request after the response. A
reader may keep views longer (the forwarding worker's frontend still encoding a response when
another request takes the connection; worker 0's response cache or sequence state holding an
input, or an output that is a view of one). So each frame's header says whether the reader
still holds a view of the buffer it reads (``"retire": true``, decided by whether the array
under those views is still alive): the writer then makes a new buffer for its next frame and
drops its own mapping of the old, which lives on, unchanged, until the last view goes.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import logging
import mmap
import os
import pickle
import re
import struct
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import numpy as np
from anyio.streams.buffered import BufferedByteReceiveStream

from . import tensor_bytes
from .errors import InternalError
from .limits import Limits
from .types import DataType, is_device_tensor, to_host

__all__ = ["SHM_MIN_BYTES", "Connection", "Frame", "Received", "Tensor", "remove_buffers"]

log = logging.getLogger("dagserve.forwarding")

SHM_MIN_BYTES = 64 * 1024
"""The default size from which a host tensor crosses in the shared buffer rather than through
the socket (``--worker-shm-min-bytes``). Measured with ``bench/bench_forwarding.py`` on 2 cores
(docs/performance.md, "Forwarding"): a round trip of one tensor costs the same both ways at
4 and 16 KiB (x1.01, x0.99), the buffer is x1.12 faster at 64 KiB, x2.45 at 256 KiB."""

Tensor = tuple[str, DataType, Any]
"""A tensor to send: its name, datatype and array (numpy, or a torch / CuPy tensor)."""

_LENGTH = struct.Struct("<I")
_MAX_FRAME = 2**31 - 1
_ALIGN = 64  # every tensor in a buffer starts on a cache line, so its numpy view is aligned
_MIN_BUFFER = 1 << 20
_SETTLE = 2  # event-loop iterations a sender waits for the views of what it received to go
_NAME = re.compile(r"forward-\d+-\d+-\d+")
_NO_LIMITS = Limits(max_tensor_elements=2**62, max_bytes_element_size=2**31 - 1)  # checked where the request came in
_serial = itertools.count()


def remove_buffers(directory: Path, index: int) -> None:
    """Remove the buffer files worker ``index``'s previous run left in ``directory`` (a file
    lives there only between its creation and its reader's opening of it)."""
    for path in directory.glob(f"forward-{index}-*"):
        path.unlink(missing_ok=True)


@dataclass(slots=True)
class Frame:
    """A frame whose tensors are placed (shared buffer written, inline bytes joined), to be
    sent with :meth:`Connection.send`. It references none of the arrays it was made from."""

    header: dict[str, Any]
    payload: bytes


@dataclass(slots=True)
class Received:
    """A frame read by :meth:`Connection.receive`: its header and its tensors, which the one
    who runs the request takes (:meth:`take`) so that no one else holds them meanwhile."""

    header: dict[str, Any]
    tensors: dict[str, Any] | None = field(default=None)

    def take(self) -> dict[str, Any]:
        """The tensors, handed over: this object keeps no reference to them."""
        tensors, self.tensors = self.tensors, None
        assert tensors is not None, "taken twice"
        return tensors


class Connection:
    """One end of a forwarding connection between two workers (see the module docstring).

    ``directory`` is the workers' private directory, where this end creates its buffer files,
    named after ``tag`` (``<worker index>-<pid>``); ``shm_min_bytes`` the size from which a
    host tensor goes into the shared buffer (a huge one sends everything through the socket).
    One frame is sent or received at a time.
    """

    def __init__(self, stream: anyio.abc.ByteStream, directory: Path, tag: str, *, shm_min_bytes: int) -> None:
        self._stream = stream
        self._buffer = BufferedByteReceiveStream(stream)
        self._directory = directory
        self._tag = tag
        self._shm_min = max(1, shm_min_bytes)
        self._write: mmap.mmap | None = None  # the buffer this end writes; the peer reads it
        self._write_path: Path | None = None  # its file, until the peer has surely opened it
        self._retire = False  # the peer still holds views of the buffer this end writes
        self._read: mmap.mmap | None = None  # the peer's buffer, mapped read-only
        self._views: weakref.ref[np.ndarray] | None = None  # the array the last frame's tensors view
        self._held: list[Any] = []  # CUDA tensors shared with the peer, until its next frame
        self.closed = False
        self.buffers_made = 0
        """Buffers this end has created (one per growth or retirement): for tests and benchmarks."""

    def reading_in_use(self) -> bool:
        """Whether a tensor received earlier still views this end's mapping of the peer's
        buffer (then the peer must not write into it again)."""
        return self._views is not None and self._views() is not None

    # -- sending -----------------------------------------------------------------------------
    def pack(self, header: dict[str, Any], tensors: Sequence[Tensor], *, inline: bool = False) -> Frame:
        """Place ``tensors`` for a frame with ``header``: the large host ones written into
        this end's buffer (made or grown as needed), the others' bytes joined (``inline``:
        every host tensor through the socket). The caller should drop its references to
        what it received before :meth:`send`, which tells the peer whether they are gone.

        Raises:
            InternalError: an array does not hold its declared datatype (the message names it),
                or the frame is over 2 GiB.
        """
        specs: list[list[Any]] = []
        parts: list[bytes | memoryview] = []
        placed: list[tuple[int, DataType, np.ndarray, bytes | None]] = []
        end = 0
        for name, datatype, array in tensors:
            if is_device_tensor(array):
                shared = _share_cuda(array)
                if shared is not None:
                    handle, tensor = shared
                    self._held.append(tensor)
                    specs.append([name, datatype.value, list(array.shape), 0, handle])
                    continue
            host = to_host(array)
            data: bytes | None = None
            if datatype is DataType.BYTES:
                data = tensor_bytes.encode_bytes(host)
                size = len(data)
            else:
                tensor_bytes.check_output(host, datatype, name=name)
                size = host.size * tensor_bytes.WIRE_DTYPES[datatype].itemsize
            if inline or size < self._shm_min:
                wire = data if data is not None else tensor_bytes.encode(host, datatype, name=name)
                parts.append(wire)
                specs.append([name, datatype.value, list(host.shape), len(wire), None])
            else:
                placed.append((end, datatype, host, data))
                specs.append([name, datatype.value, list(host.shape), size, end])
                end += -(-size // _ALIGN) * _ALIGN
        header = {**header, "tensors": specs}
        if placed:
            memory = self._writable(end, header)
            for offset, datatype, host, data in placed:
                if data is not None:
                    memory[offset:offset + len(data)] = data
                else:  # one copy, whatever the array's strides and byte order
                    target = np.ndarray(host.shape, tensor_bytes.WIRE_DTYPES[datatype], buffer=memory, offset=offset)
                    target[...] = host
        payload = b"".join(parts)
        if len(payload) > _MAX_FRAME:
            raise InternalError(f"a forwarded frame of {len(payload)} bytes is over the limit")
        return Frame(header, payload)

    async def send(self, frame: Frame) -> None:
        """Send ``frame``; its header says whether this end still holds views of the peer's
        buffer (``retire``)."""
        for _ in range(_SETTLE):
            if not self.reading_in_use():
                break
            # The caller has dropped the request, but the event loop may still hold it for an
            # iteration (callbacks of the futures that carried its results, scheduled already).
            await anyio.lowlevel.checkpoint()
        else:
            if self.reading_in_use():
                frame.header["retire"] = True
        text = json.dumps(frame.header).encode()
        head = _LENGTH.pack(len(text)) + text
        if len(frame.payload) < _MIN_BUFFER:  # one send; a copy of a small payload costs less than a call
            await self._stream.send(head + frame.payload)
        else:
            await self._stream.send(head)
            await self._stream.send(frame.payload)

    def _writable(self, size: int, header: dict[str, Any]) -> mmap.mmap:
        if size > _MAX_FRAME:
            raise InternalError(f"a forwarded frame of {size} bytes is over the limit")
        if self._write is not None and not self._retire and size <= len(self._write):
            return self._write
        why = "first" if self._write is None else "retired: the peer still views it" if self._retire else "grown"
        self._drop_write()
        size = max(_MIN_BUFFER, 1 << (size - 1).bit_length())
        path = self._directory / f"forward-{self._tag}-{next(_serial)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._write = mmap.mmap(fd, size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._write_path = path
        self._retire = False
        self.buffers_made += 1
        log.debug("forwarding buffer %s of %d bytes made (%s)", path.name, size, why)
        header["buffer"] = {"name": path.name, "size": size}
        return self._write

    def _drop_write(self) -> None:
        if self._write_path is not None:
            self._write_path.unlink(missing_ok=True)
            self._write_path = None
        self._write = None  # unmapped once nothing views it (the peer's views map it on their own)

    # -- receiving ---------------------------------------------------------------------------
    async def receive(self) -> Received:
        """The next frame from the peer: its header and its tensors (fixed-size host tensors as
        read-only numpy views, CUDA tensors as torch tensors on the GPU).

        Raises:
            anyio.EndOfStream, anyio.IncompleteRead: the peer closed the connection.
            InternalError: a malformed frame.
        """
        (length,) = _LENGTH.unpack(await self._buffer.receive_exactly(_LENGTH.size))
        header = json.loads(await self._buffer.receive_exactly(length))
        specs = header.get("tensors", ())
        size = sum(s[3] for s in specs if s[4] is None)
        if size > _MAX_FRAME:
            raise InternalError(f"a forwarded frame of {size} bytes is over the limit")
        payload = memoryview(await self._buffer.receive_exactly(size) if size else b"")
        # The peer answered, so it has opened the buffer it was told of, and is done with the
        # CUDA tensors this end shared before.
        if self._write_path is not None:
            self._write_path.unlink(missing_ok=True)
            self._write_path = None
        if self._held:
            self._held.clear()
            _collect_cuda()
        if header.get("retire"):
            self._retire = True
        if "buffer" in header:
            self._open_read(header["buffer"]["name"], header["buffer"]["size"])
        return Received(header, self._tensors(specs, payload))

    def _open_read(self, name: str, size: int) -> None:
        if not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise InternalError(f"a forwarded frame names a malformed buffer {name!r}")
        path = self._directory / name
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            path.unlink(missing_ok=True)  # mapped here and by its writer: the name is not needed
            if os.fstat(fd).st_size < size:
                raise InternalError(f"forwarding buffer {name} is smaller than the {size} bytes announced")
            self._read = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)

    def _tensors(self, specs: Sequence[list[Any]], payload: memoryview) -> dict[str, Any]:
        out: dict[str, Any] = {}
        whole: np.ndarray | None = None  # the one array every view of the buffer hangs from
        offset = 0
        for name, datatype, shape, size, where in specs:
            dtype = DataType(datatype)
            count = int(np.prod(shape, dtype=np.int64))
            if where is None:
                data = payload[offset:offset + size]
                offset += size
                out[name] = tensor_bytes.decode(data, dtype, tuple(shape), count, name=name, limits=_NO_LIMITS)
                continue
            if isinstance(where, str):
                out[name] = _open_cuda(where)
                continue
            if self._read is None or not 0 <= where <= where + size <= len(self._read):
                raise InternalError(f"a forwarded tensor '{name}' lies outside the shared buffer")
            if whole is None:
                whole = np.frombuffer(self._read, np.uint8)  # read-only: the mapping is
            if dtype is DataType.BYTES:  # decoded into bytes objects: nothing views the buffer
                out[name] = tensor_bytes.decode(whole[where:where + size].data, dtype, tuple(shape), count,
                                                name=name, limits=_NO_LIMITS)
                continue
            wire = tensor_bytes.WIRE_DTYPES[dtype]
            if size != count * wire.itemsize:
                raise InternalError(f"a forwarded tensor '{name}' of shape {shape} has {size} bytes")
            out[name] = whole[where:where + size].view(wire).reshape(shape)
        self._views = weakref.ref(whole) if whole is not None else None
        return out

    # -- the connection ----------------------------------------------------------------------
    async def wait_closed(self) -> None:
        """Return once the other side closes (or sends anything, which it must not)."""
        await self._buffer.receive(1)

    async def aclose(self) -> None:
        """Close the socket and drop both buffers (a view still held keeps its memory)."""
        self.closed = True
        self._drop_write()
        self._read = None
        self._held.clear()
        with contextlib.suppress(Exception):
            await self._stream.aclose()


# -- CUDA IPC (torch) ------------------------------------------------------------------------
def _share_cuda(tensor: Any) -> tuple[str, Any] | None:
    """A torch CUDA tensor's IPC handle (base64 of torch's pickled ``reduce_tensor``), and the
    tensor to hold meanwhile; None for another device tensor, or one torch cannot share (its
    memory is not from torch's caching allocator): that one crosses through the host."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(tensor, torch.Tensor) or tensor.device.type != "cuda":
        return None
    try:
        from torch.multiprocessing.reductions import reduce_tensor

        tensor = tensor.detach()
        handle = pickle.dumps(reduce_tensor(tensor), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any failure: the host copy still works
        log.debug("a CUDA tensor cannot be shared by IPC (%r): copied through the host", exc)
        return None
    return base64.b64encode(handle).decode(), tensor


class _TorchOnly(pickle.Unpickler):
    """Unpickles what ``reduce_tensor`` makes (torch's classes and functions) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" or module.startswith("torch."):
            return super().find_class(module, name)
        raise InternalError(f"a forwarded CUDA tensor names {module}.{name}, which is not torch's")


def _open_cuda(handle: str) -> Any:
    """The torch CUDA tensor a peer shared (imports torch: only a peer with CUDA tensors sends one)."""
    rebuild, args = _TorchOnly(io.BytesIO(base64.b64decode(handle))).load()
    return rebuild(*args)


def _collect_cuda() -> None:
    """Let torch free the CUDA memory this process shared once no peer holds it any more."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.cuda.ipc_collect()

