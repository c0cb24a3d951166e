"""GPU memory another process shares by a CUDA IPC handle (``cudaIpcMemHandle_t``), for Triton's
CUDA shared-memory extension (:mod:`dagserve.shared_memory`).

A client allocates device memory, exports it with ``cudaIpcGetMemHandle`` and registers the
64-byte handle; the server opens it with ``cudaIpcOpenMemHandle`` (:func:`open_memory`) and
copies an input's bytes from it to host memory, and an output's bytes from host memory into it
(:class:`DeviceMemory`). CUDA is reached through CuPy, imported on the first registration, never
at import time; the size of the allocation behind the handle, which bounds every access, comes
from the driver's ``cuMemGetAddressRange`` (``libcuda``, present wherever CUDA runs).

A handle cannot be opened by the process that exported it (CUDA refuses: the client and the
server must be two processes), which is also why tests of the real path run the server in a
subprocess (tests/test_cuda_shared_memory.py, on the GPU machine).
"""

from __future__ import annotations

import ctypes
import importlib
import weakref
from typing import Any, Protocol

import numpy as np

from .errors import InvalidInputError, UnsupportedError

__all__ = ["CUDA_IPC_HANDLE_SIZE", "DeviceMemory", "open_memory"]

CUDA_IPC_HANDLE_SIZE = 64
"""``sizeof(cudaIpcMemHandle_t)``."""

_INSTALL = "pip install cupy-cuda12x (or cupy-cuda13x, matching the machine's CUDA)"


class DeviceMemory(Protocol):
    """An opened IPC allocation: ``size`` bytes usable from its start (the registered region
    must fit in them). Copies are synchronous; an access outside ``size`` is refused before
    it reaches CUDA."""

    size: int
    device_id: int

    def read(self, offset: int, size: int) -> memoryview:
        """``size`` bytes from ``offset``, copied to host memory."""
        ...

    def write(self, offset: int, data: memoryview) -> None:
        """Copy ``data`` (host bytes) to ``offset``."""
        ...

    def close(self) -> None:
        """Close the handle (idempotent); later reads and writes raise InvalidInputError."""
        ...


def open_memory(handle: bytes, device_id: int) -> DeviceMemory:
    """Open the CUDA IPC ``handle`` on GPU ``device_id``.

    Raises:
        UnsupportedError: CuPy is not installed, or finds no CUDA device (``device_id``
            aside): the machine cannot serve CUDA shared memory.
        InvalidInputError: ``device_id`` names no GPU, or the handle cannot be opened (not a
            live handle from another process, a handle of this very process, ...).
    """
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        raise UnsupportedError(f"CUDA shared memory needs CuPy on the server: {_INSTALL}") from None
    runtime = cupy.cuda.runtime
    try:
        count = int(runtime.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError: no driver, no device
        raise UnsupportedError(f"CUDA shared memory needs a CUDA GPU on the server: {exc}") from None
    if count == 0:
        raise UnsupportedError("CUDA shared memory needs a CUDA GPU on the server: none is visible")
    if not 0 <= device_id < count:
        raise InvalidInputError(f"device_id {device_id} names no GPU of the server (it has {count})")
    return _CupyMemory(cupy, handle, device_id)


class _CupyMemory:
    """One IPC allocation opened with CuPy (see :class:`DeviceMemory`). The handle is closed by
    :meth:`close` or, failing that, when the object is garbage (a request still writing an
    output keeps it alive after its region was unregistered, as a mapping is kept)."""

    def __init__(self, cupy: Any, handle: bytes, device_id: int) -> None:
        self._cupy = cupy
        runtime = self._runtime = cupy.cuda.runtime
        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            try:
                ptr = int(runtime.ipcOpenMemHandle(bytes(handle), getattr(runtime, "cudaIpcMemLazyEnablePeerAccess", 1)))
            except Exception as exc:  # noqa: BLE001 - CUDARuntimeError, with CUDA's reason
                raise InvalidInputError(f"failed to open CUDA IPC handle: {exc}") from None
            try:
                base, size = _address_range(ptr)
            except Exception:
                runtime.ipcCloseMemHandle(ptr)
                raise
        self._ptr = ptr
        self.size = size - (ptr - base)
        self._closer = weakref.finalize(self, _close_handle, cupy, ptr, device_id)

    def _pointer(self, offset: int, size: int) -> int:
        if not self._closer.alive:
            raise InvalidInputError("the CUDA shared memory region was unregistered")
        if offset < 0 or size < 0 or offset + size > self.size:  # the region checked first: never expected
            raise InvalidInputError(f"{offset} + {size} bytes is outside the {self.size} bytes of the CUDA allocation")
        return self._ptr + offset

    def read(self, offset: int, size: int) -> memoryview:
        host = np.empty(size, np.uint8)
        if size:
            with self._cupy.cuda.Device(self.device_id):
                self._runtime.memcpy(host.ctypes.data, self._pointer(offset, size), size,
                                     getattr(self._runtime, "memcpyDeviceToHost", 2))
        return host.data

    def write(self, offset: int, data: memoryview) -> None:
        host = np.frombuffer(data, np.uint8)  # a view: no copy of the bytes
        if host.nbytes:
            with self._cupy.cuda.Device(self.device_id):
                self._runtime.memcpy(self._pointer(offset, host.nbytes), host.ctypes.data, host.nbytes,
                                     getattr(self._runtime, "memcpyHostToDevice", 1))

    def close(self) -> None:
        self._closer()


def _close_handle(cupy: Any, ptr: int, device_id: int) -> None:
    with cupy.cuda.Device(device_id):
        cupy.cuda.runtime.ipcCloseMemHandle(ptr)


_libcuda: Any = None


def _address_range(ptr: int) -> tuple[int, int]:
    """(base, size) of the allocation holding device pointer ``ptr``: the driver's
    ``cuMemGetAddressRange``, as Triton checks a region's size (in the current context).

    Raises:
        UnsupportedError: the driver library cannot be loaded.
        InvalidInputError: the driver does not know the pointer.
    """
    global _libcuda  # the driver library, loaded once
    if _libcuda is None:
        try:
            _libcuda = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise UnsupportedError(f"CUDA shared memory needs the CUDA driver library: {exc}") from None
    base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
    result = _libcuda.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr))
    if result != 0:
        raise InvalidInputError(f"failed to get the size of the CUDA IPC allocation (CUresult {result})")
    return base.value, size.value
