"""Tensor datatypes, tensor signatures and the request/response value objects.

A tensor inside dagserve is a numpy array (BYTES tensors are object arrays of ``bytes``), or,
between two GPU steps, a device tensor (a torch CUDA tensor or a CuPy array) that stays on the
GPU: :func:`datatype_of` reads any of them without copying, and :func:`to_host` is the one
place a device tensor is copied to host memory, at the edge (a frontend encoding a response).
``DataType`` is the one place that knows every name a datatype goes by: the KServe v2 wire
name (``FP32``), Triton's config name (``TYPE_FP32``), the numpy dtype and the torch dtype.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "DataType",
    "InferRequest",
    "InferResponse",
    "Parameters",
    "RequestedOutput",
    "ResponseSender",
    "TensorSpec",
    "check_shape",
    "datatype_of",
    "is_device_tensor",
    "to_host",
]

Parameters = Mapping[str, Any]
"""Request/response parameters: names to ``str``, ``int``, ``float`` or ``bool``."""


class DataType(enum.Enum):
    """A tensor element type; ``value`` is its KServe v2 wire name."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"
    BF16 = "BF16"

    numpy_dtype: np.dtype[Any]
    """The numpy dtype holding this type (object for BYTES; uint16 bits for BF16). A plain
    attribute of each member, set below: read on hot paths, where a property and a lookup
    keyed by the member (an Enum's ``__hash__`` runs in Python) would cost more."""

    @property
    def config_name(self) -> str:
        """Triton's model-config name, e.g. ``TYPE_FP32`` (``TYPE_STRING`` for BYTES)."""
        return "TYPE_STRING" if self is DataType.BYTES else "TYPE_" + self.value

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire; 0 for the variable-size BYTES."""
        return 0 if self is DataType.BYTES else _NUMPY[self].itemsize

    @classmethod
    def parse(cls, name: str) -> DataType:
        """Accept a wire name (``FP32``), a config name (``TYPE_FP32``) or ``STRING``.

        Raises:
            ValueError: the name is no datatype.
        """
        key = name.upper()
        key = key.removeprefix("TYPE_")
        if key == "STRING":
            key = "BYTES"
        try:
            return cls(key)
        except ValueError:
            raise ValueError(f"unknown datatype {name!r}") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> DataType:
        """The datatype for a numpy dtype; object and bytes/str arrays are BYTES.

        Raises:
            ValueError: numpy type with no KServe equivalent (e.g. complex).
        """
        found = _FROM_NUMPY_FAST.get(dtype)  # the hot path: a native-order numpy dtype
        if found is not None:
            return found
        dtype = np.dtype(dtype)
        if dtype.kind in "OSU":
            return cls.BYTES
        try:
            return _FROM_NUMPY[dtype.newbyteorder("=")]
        except KeyError:
            raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None

    @classmethod
    def from_torch(cls, dtype: Any) -> DataType:
        """The datatype for a ``torch.dtype`` (read by name, so torch is not imported).

        Raises:
            ValueError: torch type with no KServe equivalent (e.g. complex64).
        """
        try:
            return _FROM_TORCH[str(dtype)]
        except KeyError:
            raise ValueError(f"torch dtype {dtype} has no KServe v2 datatype") from None

    @property
    def torch_dtype(self) -> Any:
        """The ``torch.dtype`` of this type (imports torch).

        Raises:
            ValueError: BYTES, which torch tensors cannot hold.
        """
        import torch

        for name, datatype in _FROM_TORCH.items():
            if datatype is self:
                return getattr(torch, name.removeprefix("torch."))
        raise ValueError(f"datatype {self.value} has no torch dtype")


_NUMPY: dict[DataType, np.dtype[Any]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype(np.uint16),
    DataType.UINT32: np.dtype(np.uint32),
    DataType.UINT64: np.dtype(np.uint64),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype(np.int16),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.FP16: np.dtype(np.float16),
    DataType.FP32: np.dtype(np.float32),
    DataType.FP64: np.dtype(np.float64),
    DataType.BYTES: np.dtype(np.object_),
    DataType.BF16: np.dtype(np.uint16),
}
for _datatype, _dtype in _NUMPY.items():
    _datatype.numpy_dtype = _dtype
_FROM_NUMPY = {v: k for k, v in _NUMPY.items() if k not in (DataType.BYTES, DataType.BF16)}
_FROM_NUMPY_FAST: dict[Any, DataType] = {**_FROM_NUMPY, np.dtype(np.object_): DataType.BYTES}
_FROM_TORCH = {
    "torch.bool": DataType.BOOL,
    "torch.uint8": DataType.UINT8,
    "torch.uint16": DataType.UINT16,
    "torch.uint32": DataType.UINT32,
    "torch.uint64": DataType.UINT64,
    "torch.int8": DataType.INT8,
    "torch.int16": DataType.INT16,
    "torch.int32": DataType.INT32,
    "torch.int64": DataType.INT64,
    "torch.float16": DataType.FP16,
    "torch.float32": DataType.FP32,
    "torch.float64": DataType.FP64,
    "torch.bfloat16": DataType.BF16,
}


def _is_torch_tensor(value: Any) -> bool:
    # Only a program that created a tensor has torch imported; never import it here.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_cupy_array(value: Any) -> bool:
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(value, cupy.ndarray)


def is_device_tensor(value: Any) -> bool:
    """True for a tensor in GPU memory (a torch tensor not on the CPU, or a CuPy array)."""
    if _is_torch_tensor(value):
        return bool(value.device.type != "cpu")
    return _is_cupy_array(value)


def datatype_of(array: Any) -> DataType:
    """The datatype of a numpy array, a torch tensor or a CuPy array, read off its dtype
    (nothing is copied or moved off the device). A numpy uint16 array reads as UINT16: BF16
    data in numpy must be declared separately.

    Raises:
        ValueError: the element type has no KServe v2 datatype.
    """
    if type(array) is np.ndarray:
        found = _FROM_NUMPY_FAST.get(array.dtype)
        if found is not None:
            return found
    if isinstance(array, np.ndarray):
        return DataType.from_numpy(array.dtype)
    if _is_torch_tensor(array):
        return DataType.from_torch(array.dtype)
    return DataType.from_numpy(np.dtype(array.dtype))


def to_host(array: Any) -> np.ndarray:
    """The tensor as a numpy array in host memory: the only place device data is copied.

    A numpy array is returned as is; a CPU torch tensor is viewed without a copy. A torch CUDA
    tensor is copied into page-locked (pinned) host memory, taken from torch's caching host
    allocator, so the copy runs at full bus speed and the buffer is reused; the returned array
    keeps that buffer alive. A CuPy array is copied likewise into pinned memory. BF16 tensors
    come back as their uint16 bit patterns, dagserve's host form of BF16. Anything else is
    converted with ``np.asarray``.

    Blocks until the copy is done (it synchronizes with the device), so a caller on the event
    loop should hand large device tensors to a worker thread.
    """
    if isinstance(array, np.ndarray):
        return array
    if _is_torch_tensor(array):
        return _torch_to_host(array)
    if _is_cupy_array(array):
        return _cupy_to_host(array)
    return np.asarray(array)


def _torch_to_host(tensor: Any) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.uint16)  # numpy has no bfloat16: ship the bit patterns
    if tensor.device.type != "cpu":
        # Pinned memory makes the copy a single DMA; the caching host allocator reuses it.
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        pinned.copy_(tensor)
        tensor = pinned
    return tensor.resolve_conj().numpy()


def _cupy_to_host(array: Any) -> np.ndarray:
    import cupy
    import cupyx

    array = cupy.ascontiguousarray(array)
    out = cupyx.empty_pinned(array.shape, dtype=array.dtype)
    array.get(out=out)
    return out


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorSpec:
    """The declared signature of one model input or output.

    ``shape`` excludes the batch dimension when the model batches; ``-1`` is any size.
    """

    name: str
    datatype: DataType
    shape: tuple[int, ...]
    optional: bool = False
    allow_ragged_batch: bool = False
    reshape: tuple[int, ...] | None = None

    def full_shape(self, batching: bool) -> tuple[int, ...]:
        """The shape clients see: ``[-1] + shape`` for a batching model."""
        return (-1, *self.shape) if batching else self.shape



def check_shape(dims: Any, name: str) -> tuple[tuple[int, ...], int]:
    """A wire shape checked before anything is allocated for it: its dims and element count.

    Every dimension must be an integer >= 0 (``bool`` is not one). How many elements a shape
    may span is the server's limit, checked next by :meth:`dagserve.limits.Limits.check_elements`
    (which refuses a zero-element ``[0, 2**40]`` like a huge shape).

    Raises:
        InvalidInputError: naming input ``name`` and its shape.
    """
    count = 1
    for d in dims:
        if type(d) is not int or d < 0:
            problem = "a negative dimension" if type(d) is int else f"a dimension that is not an integer ({d!r})"
            raise InvalidInputError(
                f"input '{name}' has invalid shape {list(dims)}: {problem}; dimensions are integers >= 0"
            )
        count *= d
    return tuple(dims), count


def shape_matches(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """True when ``actual`` fits ``expected`` (same rank, ``-1`` matches any size)."""
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        if a != e and e != -1:
            return False
    return True


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestedOutput:
    """An output the client asked for, with its per-output parameters (e.g. ``binary_data``)."""

    name: str
    parameters: Parameters = field(default_factory=dict)


class ResponseSender(Protocol):
    """Where a decoupled model sends its 0..N responses to one request.

    ``send`` may be called from any thread, also after ``execute`` has returned; the last call
    has ``final=True`` (its ``outputs`` may be ``None``: "no more responses"). An exception as
    ``outputs`` fails the request. Sends after the client went away are dropped.
    """

    def send(self, outputs: Mapping[str, Any] | BaseException | None, *, final: bool) -> None: ...

    def is_cancelled(self) -> bool: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class InferRequest:
    """One inference request as the engine sees it, whatever transport brought it.

    ``outputs`` is ``None`` when the client asked for every output. ``datatypes`` holds the
    wire datatype of an input where numpy cannot tell it (BF16 travels as uint16); every other
    input's datatype is read off its array.
    """

    inputs: Mapping[str, np.ndarray]
    id: str = ""
    datatypes: Mapping[str, DataType] = field(default_factory=dict)
    parameters: Parameters = field(default_factory=dict)
    outputs: tuple[RequestedOutput, ...] | None = None
    sender: ResponseSender | None = field(default=None, repr=False, compare=False)
    trace: Any = field(default=None, repr=False, compare=False)
    """The span of the model call serving this request when it is traced (set by the engine;
    a ``dagserve.tracing.Span``), so a batch execution can hang its span under it."""
    fan_out: bool = field(default=False, repr=False, compare=False)
    """One of several requests submitted at once (the items of a pipeline's map): a dynamic
    batcher queues it even on an idle instance, so that they arrive as one batch."""

    def datatype(self, name: str) -> DataType:
        """The datatype of input ``name``.

        Raises:
            InvalidInputError: the array's numpy type has no KServe v2 datatype.
        """
        declared = self.datatypes.get(name)
        if declared is not None:
            return declared
        try:
            return datatype_of(self.inputs[name])
        except ValueError as exc:
            raise InvalidInputError(f"input '{name}': {exc}") from None

    def output_names(self) -> tuple[str, ...] | None:
        """Names of the requested outputs, or ``None`` for all."""
        return None if self.outputs is None else tuple(o.name for o in self.outputs)


@dataclass(frozen=True, kw_only=True, slots=True)
class InferResponse:
    """The answer to one :class:`InferRequest`.

    ``datatypes`` gives each output's declared datatype (BF16 is not visible in numpy).
    ``final`` is false on all but the last response of a decoupled model's stream; a final
    response of a decoupled model may have no outputs ("the stream is over").
    """

    model_name: str
    model_version: str
    outputs: Mapping[str, np.ndarray]
    datatypes: Mapping[str, DataType]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    final: bool = True


def bytes_array(values: Any) -> np.ndarray:
    """Turn a nested list / array of str or bytes into a BYTES (object) array of ``bytes``."""
    arr = np.asarray(values, dtype=np.object_)
    flat = arr.reshape(-1)
    for i, v in enumerate(flat):
        if isinstance(v, str):
            flat[i] = v.encode()
        elif not isinstance(v, bytes):
            flat[i] = str(v).encode()
    return arr
