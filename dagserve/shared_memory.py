"""Triton's shared-memory extensions: tensors carried in memory the client shares with the server.

A client creates a POSIX shared-memory object (``/dev/shm/<key>``), registers a window of it
under a region name (``register_system``), and then names that region, an offset and a byte
size in an input's or a requested output's parameters instead of sending the bytes
(``shared_memory_region``, ``shared_memory_offset``, ``shared_memory_byte_size``). An input is
read straight from the mapping (a read-only numpy view, no copy for fixed-size datatypes); an
output is written into it and the response carries only the output's name, datatype and shape,
as Triton answers.

One :class:`SharedMemoryRegistry` serves both frontends (a region registered over HTTP is usable
over gRPC, as in Triton); this module knows no transport. Names, messages and status codes
follow Triton's ``shared_memory_manager.cc`` and its frontends; where dagserve differs
(docs/differences-from-triton.md) it is to answer a client's mistake with 400 rather than 500.

Security (docs/security.md): client shared memory is off unless the operator allows it
(``--allow-client-shm``, Triton's flag and default); a key is one name in ``/dev/shm`` (no
``/`` after its leading ones, no ``.``/``..``, opened with ``O_NOFOLLOW``, regular files only),
as glibc's ``shm_open`` that Triton calls confines it; at most :data:`MAX_REGIONS` regions are
registered at once (each holds a file descriptor).

CUDA shared memory (``register_cuda``): the client registers a ``cudaIpcMemHandle_t`` of device
memory it allocated; the server opens it (:mod:`dagserve.cuda_ipc`, through CuPy, imported on
the first registration) and copies an input's bytes from the GPU to host memory before the
model runs, and an output's bytes from host memory to the GPU after. Without CuPy or a GPU,
registering answers UNSUPPORTED, saying what is missing.

Lifetime: unregistering takes a region out of the table at once; a request that resolved it
earlier keeps its mapping (numpy views and output windows hold it) and the memory is unmapped
when the last of them is gone, so unregistering a region in use never crashes the server
(Triton defers the unmap likewise). A CUDA handle is closed likewise when the last request
holding it is done.
"""

from __future__ import annotations

import enum
import mmap
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import cuda_ipc, tensor_bytes
from .cuda_ipc import CUDA_IPC_HANDLE_SIZE, DeviceMemory
from .errors import InvalidInputError, RegionExistsError, RegionNotFoundError, UnsupportedError
from .limits import DEFAULT_LIMITS, Limits
from .types import DataType, InferResponse, RequestedOutput, to_host

__all__ = [
    "CUDA_IPC_HANDLE_SIZE",
    "DISABLED_MESSAGE",
    "MAX_REGIONS",
    "PARAMETERS",
    "SHM_DIRECTORY",
    "OutputTarget",
    "RegionKind",
    "SharedMemoryRegistry",
    "TensorRef",
    "tensor_ref",
]

REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
PARAMETERS = (REGION, OFFSET, BYTE_SIZE)
"""The tensor parameters of the extension (inputs and requested outputs alike)."""

SHM_DIRECTORY = Path("/dev/shm")
"""Where POSIX shared-memory objects live on Linux (what ``shm_open`` opens)."""

MAX_REGIONS = 256
"""Regions registered at once, system and CUDA together: each holds a file descriptor."""

DISABLED_MESSAGE = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
)
"""Triton's words (and code, UNSUPPORTED) when client shared memory is not allowed."""

_RESERVED_PREFIX = "triton_python_backend_shm_region_"  # Triton's python backend's own regions
_NAME_MAX = 255


class RegionKind(enum.Enum):
    """The two families of regions; they share one namespace of region names."""

    SYSTEM = "system"
    CUDA = "cuda"


@dataclass(frozen=True, slots=True)
class TensorRef:
    """Where one tensor lives: ``byte_size`` bytes at ``offset`` in region ``region``."""

    region: str
    offset: int
    byte_size: int


def tensor_ref(parameters: Mapping[str, Any], where: str) -> TensorRef | None:
    """The shared-memory reference in a tensor's ``parameters``, ``None`` when it has none.

    ``where`` names the tensor in messages (``"input 'X'"``).

    Raises:
        InvalidInputError: a parameter has the wrong type or a negative value, the offset or
            byte size comes without a region, or the region without its byte size.
    """
    region = parameters.get(REGION)
    offset = parameters.get(OFFSET)
    size = parameters.get(BYTE_SIZE)
    if region is None:
        if offset is not None or size is not None:
            given = OFFSET if offset is not None else BYTE_SIZE
            raise InvalidInputError(f"'{given}' can not be specified without '{REGION}' parameter for {where}")
        return None
    if type(region) is not str:
        raise InvalidInputError(f"invalid value type for '{REGION}' parameter for {where}, expected a string")
    if size is None:
        raise InvalidInputError(f"{where}: '{REGION}' needs '{BYTE_SIZE}' too (the size of the tensor's data)")
    return TensorRef(region, _count(offset, OFFSET, where) if offset is not None else 0, _count(size, BYTE_SIZE, where))


def _count(value: Any, key: str, where: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"invalid value for '{key}' parameter for {where}: expected a non-negative integer")
    return value


class _Region:
    """One registered window: of a mapping (system) or of an opened CUDA IPC allocation."""

    __slots__ = ("_base", "_map", "byte_size", "device", "device_id", "key", "kind", "name", "offset")

    def __init__(
        self, kind: RegionKind, name: str, key: str, offset: int, byte_size: int,
        mapping: mmap.mmap | None, base: int, device_id: int = 0, device: DeviceMemory | None = None,
    ) -> None:
        self.kind, self.name, self.key = kind, name, key
        self.offset, self.byte_size, self.device_id = offset, byte_size, device_id
        self._map, self._base = mapping, base
        self.device = device

    def status(self) -> dict[str, Any]:
        if self.kind is RegionKind.SYSTEM:
            return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def check(self, ref: TensorRef) -> None:
        """Raises InvalidInputError (Triton's messages) unless ``ref`` lies inside the region."""
        if ref.offset >= self.byte_size:
            raise InvalidInputError(
                f"Invalid offset for shared memory region: '{self.name}' "
                f"(offset {ref.offset}, the region holds {self.byte_size} bytes)"
            )
        if ref.offset + ref.byte_size > self.byte_size:
            raise InvalidInputError(
                f"Invalid offset + byte size for shared memory region: '{self.name}' (offset {ref.offset} + "
                f"byte size {ref.byte_size} > the region's {self.byte_size} bytes)"
            )

    def read(self, ref: TensorRef) -> memoryview:
        """The ``ref`` bytes: a view of the mapping (system), a host copy (CUDA).

        Raises:
            InvalidInputError: see :meth:`check` and :meth:`window`.
        """
        if self.device is not None:
            self.check(ref)
            return self.device.read(ref.offset, ref.byte_size)
        return self.window(ref)

    def window(self, ref: TensorRef) -> memoryview:
        """A writable view of the ``ref`` bytes of this system region (it keeps the mapping alive).

        Raises:
            InvalidInputError: the window is not inside the region (Triton's messages), or the
                object under the region has been truncated since it was registered (reading it
                would kill the server with SIGBUS).
        """
        self.check(ref)
        mapping = self._map
        assert mapping is not None  # a system region
        start = self._base + ref.offset
        end = start + ref.byte_size
        try:
            # security: a client that shrank its object after registering would make the
            # access below fault; fstat is cheap (one syscall).
            backed = mapping.size() - (self.offset - self._base)
        except (ValueError, OSError):
            backed = -1
        if backed < end:
            raise InvalidInputError(
                f"shared memory region '{self.name}': its key '{self.key}' no longer holds the registered "
                f"{self.byte_size} bytes (the object was truncated); register it again"
            )
        return memoryview(mapping)[start:end]

    def close(self) -> None:
        """Unmap now, or, while requests still hold views of it, when the last one is gone; a
        CUDA handle is closed when the last request holding it is done."""
        mapping, self._map = self._map, None
        self.device = None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # exported views: the mapping is unmapped when they are released


@dataclass(frozen=True, slots=True, eq=False)
class OutputTarget:
    """Where a requested output is written (resolved before the model runs): ``window``, a
    view of a system region, or ``byte_size`` bytes at ``offset`` of the GPU memory ``device``."""

    name: str
    region: str
    byte_size: int
    window: memoryview | None
    device: DeviceMemory | None = None
    offset: int = 0


class SharedMemoryRegistry:
    """The regions clients registered, shared by the HTTP and gRPC frontends.

    Every method is synchronous, cheap and meant for the event loop's thread (both frontends
    run there); the views it hands out may be read and written from model threads.
    ``allow_client_shm`` False (the default, as Triton's) refuses registration and the use of
    regions with Triton's UNSUPPORTED message; status then lists nothing.
    """

    def __init__(
        self, *, allow_client_shm: bool = False, directory: Path = SHM_DIRECTORY, max_regions: int = MAX_REGIONS
    ) -> None:
        self.allow_client_shm = allow_client_shm
        self._directory = directory
        self._max_regions = max_regions
        self._regions: dict[str, _Region] = {}

    # ------------------------------------------------------------------ the extension's API

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the POSIX shared-memory object ``key``
        (``/dev/shm/<key>``, leading ``/`` optional) as region ``name``.

        Raises:
            UnsupportedError: client shared memory is not allowed.
            InvalidInputError: no name, a key outside ``/dev/shm`` or Triton-reserved, an
                object that cannot be opened (missing, not permitted, not a regular file), a
                window outside the object, a zero or negative size, or too many regions.
            RegionExistsError: a region of that name is registered.
        """
        self.check_allowed()
        if not name:
            raise InvalidInputError("'region name' is necessary to register system shared memory region")
        for value, field in ((offset, "offset"), (byte_size, "byte_size")):
            if type(value) is not int or value < 0:
                raise InvalidInputError(
                    f"Shared memory register request field '{field}' must be a non-negative integer"
                )
        object_name = _object_name(name, key)
        self._check_new(name)
        if byte_size == 0:
            raise InvalidInputError(f"failed to register shared memory region '{name}': byte_size must be positive")
        path = os.path.join(self._directory, object_name)
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # security: no symlink, no FIFO wait
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise InvalidInputError(f"Unable to open shared memory region: '{key}' ({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInputError(f"Unable to open shared memory region: '{key}' (not a shared-memory object)")
            if offset + byte_size > info.st_size:
                raise InvalidInputError(
                    f"failed to register shared memory region '{name}': invalid args (offset {offset} + "
                    f"byte_size {byte_size} > the {info.st_size} bytes of '{key}')"
                )
            # mmap offsets must be page-aligned: map from the page holding `offset`.
            base = offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(fd, base + byte_size, offset=offset - base)
            except OSError as exc:
                raise InvalidInputError(f"failed to register shared memory region '{name}': {exc.strerror}") from None
        finally:
            os.close(fd)  # mmap holds its own duplicate
        self._regions[name] = _Region(RegionKind.SYSTEM, name, key, offset, byte_size, mapping, base)

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes of the GPU memory a CUDA IPC handle shares (on GPU
        ``device_id``) as region ``name``.

        Raises:
            UnsupportedError: client shared memory is not allowed, or this server cannot map
                CUDA memory (no CuPy, no GPU; the message says which).
            InvalidInputError: no name, a handle that is not a ``cudaIpcMemHandle_t`` or cannot
                be opened, a ``device_id`` with no GPU, a zero size, a size past the end of the
                allocation, or too many regions.
            RegionExistsError: a region of that name is registered.
        """
        self.check_allowed()
        if not name:
            raise InvalidInputError("'region name' is necessary to register cuda shared memory region")
        if len(raw_handle) != CUDA_IPC_HANDLE_SIZE:
            raise InvalidInputError("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
        self._check_new(name)
        if byte_size <= 0:
            raise InvalidInputError(f"failed to register shared memory region '{name}': byte_size must be positive")
        try:
            device = cuda_ipc.open_memory(raw_handle, device_id)
        except UnsupportedError as exc:
            raise UnsupportedError(f"failed to register CUDA shared memory region: '{name}', {exc}") from None
        except InvalidInputError as exc:
            raise InvalidInputError(f"failed to register shared memory region '{name}': {exc}") from None
        if byte_size > device.size:
            device.close()
            raise InvalidInputError(
                f"failed to register shared memory region '{name}': invalid args (byte_size {byte_size} > the "
                f"{device.size} bytes of the CUDA allocation)"
            )
        self._regions[name] = _Region(RegionKind.CUDA, name, "", 0, byte_size, None, 0, device_id, device)

    def unregister(self, kind: RegionKind, name: str = "") -> None:
        """Unregister region ``name`` of ``kind``, or every region of ``kind`` when ``name`` is
        empty. A name that is not registered (or is of the other kind) is not an error, as in
        Triton. Requests that already resolved a region keep their views of it.

        Raises:
            UnsupportedError: client shared memory is not allowed.
        """
        self.check_allowed()
        if name:
            region = self._regions.get(name)
            if region is not None and region.kind is kind:
                del self._regions[name]
                region.close()
            return
        for region in [r for r in self._regions.values() if r.kind is kind]:
            del self._regions[region.name]
            region.close()

    def status(self, kind: RegionKind, name: str = "") -> list[dict[str, Any]]:
        """Triton's status entries: ``name, key, offset, byte_size`` (system) or ``name,
        device_id, byte_size`` (CUDA), of one region or of every region of ``kind``.

        Raises:
            RegionNotFoundError: ``name`` is not registered, or is a region of the other kind.
        """
        if not name:
            return [r.status() for r in self._regions.values() if r.kind is kind]
        region = self._regions.get(name)
        if region is None:
            family = "system" if kind is RegionKind.SYSTEM else "cuda"
            raise RegionNotFoundError(f"Unable to find {family} shared memory region: '{name}'")
        if region.kind is not kind:
            mine, other = ("system", "CUDA") if region.kind is RegionKind.SYSTEM else ("CUDA", "system")
            raise RegionNotFoundError(
                f"The region named '{name}' is registered as {mine} shared memory, not {other} shared memory"
            )
        return [region.status()]

    # ------------------------------------------------------------------ tensors of a request

    def input_tensor(
        self, ref: TensorRef, datatype: DataType, shape: tuple[int, ...], count: int, *,
        name: str, limits: Limits = DEFAULT_LIMITS,
    ) -> np.ndarray:
        """Input ``name`` read from its region: a read-only view over the shared memory for a
        fixed-size datatype (the client must not change those bytes until it has the response,
        as with Triton), an array of copied ``bytes`` for BYTES; from a CUDA region, a host
        copy of its bytes.

        Raises:
            UnsupportedError: client shared memory is not allowed.
            RegionNotFoundError: the region is not registered.
            InvalidInputError: the window is outside the region, or its size does not fit the
                input's shape and datatype.
        """
        window = self._region(ref).read(ref)
        array = tensor_bytes.decode(window, datatype, shape, count, name=name, limits=limits)
        if array.dtype != np.object_:
            array.flags.writeable = False  # like every other input: models must not write them
        return array

    def output_targets(self, outputs: Sequence[RequestedOutput] | None) -> dict[str, OutputTarget]:
        """The windows of the requested outputs that go to shared memory (none: ``{}``),
        resolved before the model runs so a bad region fails the request at once.

        Raises:
            UnsupportedError: client shared memory is not allowed.
            RegionNotFoundError: a region is not registered.
            InvalidInputError: bad parameters, a window outside its region, or an output that
                asks for shared memory and ``binary_data`` (or ``classification``) at once.
        """
        targets: dict[str, OutputTarget] = {}
        if not outputs:
            return targets
        for output in outputs:
            params = output.parameters
            if not params:
                continue
            ref = tensor_ref(params, f"output '{output.name}'")
            if ref is None:
                continue
            if params.get("binary_data") is True:
                raise InvalidInputError("Output can't set both 'shared_memory_region' and 'binary_data'")
            if "classification" in params or "class_count" in params:
                raise InvalidInputError("Output can't set both 'shared_memory_region' and 'classification'")
            region = self._region(ref)
            if region.device is not None:
                region.check(ref)
                targets[output.name] = OutputTarget(output.name, ref.region, ref.byte_size, None, region.device,
                                                    ref.offset)
            else:
                targets[output.name] = OutputTarget(output.name, ref.region, ref.byte_size, region.window(ref))
        return targets

    @staticmethod
    def write_outputs(response: InferResponse, targets: Mapping[str, OutputTarget]) -> None:
        """Copy each output of ``response`` that has a target into its window or GPU memory (in
        the wire layout: little-endian, BYTES as length-prefixed elements). An output the response lacks
        (an optional one that was not produced) is skipped, as the encoders skip it.

        Raises:
            InvalidInputError: a window is smaller than its output (Triton's message; Triton
                answers it with INTERNAL).
            InternalError: an output does not hold its declared datatype.
        """
        for name, target in targets.items():
            array = response.outputs.get(name)
            if array is None:
                continue
            array = to_host(array)
            datatype = response.datatypes.get(name) or DataType.from_numpy(array.dtype)
            raw = tensor_bytes.encode(array, datatype, name=name)
            size = len(raw) if isinstance(raw, bytes) else raw.nbytes
            if size > target.byte_size:
                raise InvalidInputError(
                    f"shared memory size specified with the request for output '{name}' ({target.byte_size} bytes) "
                    f"should be at least {size} bytes to hold the results"
                )
            if target.window is not None:
                target.window[:size] = raw
            else:
                assert target.device is not None
                target.device.write(target.offset, memoryview(raw).cast("B") if size else memoryview(b""))

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Unregister every region (the server is stopping)."""
        regions, self._regions = list(self._regions.values()), {}
        for region in regions:
            region.close()

    def __len__(self) -> int:
        return len(self._regions)

    # ------------------------------------------------------------------ helpers

    def check_allowed(self) -> None:
        """Raises UnsupportedError (Triton's message) unless client shared memory is allowed."""
        if not self.allow_client_shm:
            raise UnsupportedError(DISABLED_MESSAGE)

    def _check_new(self, name: str) -> None:
        if name in self._regions:
            raise RegionExistsError(f"shared memory region '{name}' already in manager")
        if len(self._regions) >= self._max_regions:
            raise InvalidInputError(
                f"failed to register shared memory region '{name}': {self._max_regions} regions are "
                "registered, the most one server holds; unregister some first"
            )

    def _region(self, ref: TensorRef) -> _Region:
        self.check_allowed()
        region = self._regions.get(ref.region)
        if region is None:
            raise RegionNotFoundError(f"Unable to find shared memory region: '{ref.region}'")
        return region


def _object_name(name: str, key: str) -> str:
    """The file name in ``/dev/shm`` that ``key`` names, as ``shm_open`` confines it.

    Raises:
        InvalidInputError: the key is not a string, is empty or only slashes, has a ``/``
            after its leading ones, is ``.`` or ``..``, holds NUL, is too long, or starts with
            the prefix Triton reserves for its python backend.
    """
    if type(key) is not str:
        raise InvalidInputError("Shared memory register request field 'key' must be a string")
    stripped = key.lstrip("/")
    if not stripped:
        raise InvalidInputError(f"cannot register shared memory region '{name}' - invalid shm key '{key}'")
    if "/" in stripped or stripped in (".", "..") or "\0" in stripped or len(stripped.encode()) > _NAME_MAX:
        # security: a key names one object in /dev/shm, never a path (shm_open refuses these too)
        raise InvalidInputError(
            f"cannot register shared memory region '{name}' - invalid shm key '{key}': a key is one name "
            "in /dev/shm, with no '/' after its leading ones"
        )
    if stripped.startswith(_RESERVED_PREFIX):
        raise InvalidInputError(
            f"cannot register shared memory region '{name}' with key '{key}' as the key contains the "
            f"reserved prefix '{_RESERVED_PREFIX}'"
        )
    return stripped
