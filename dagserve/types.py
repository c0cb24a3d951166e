"""Tensor datatypes, tensor signatures and the request/response value objects.

A tensor inside dagserve is a numpy array (BYTES tensors are object arrays of ``bytes``).
``DataType`` is the one place that knows every name a datatype goes by: the KServe v2 wire
name (``FP32``), Triton's config name (``TYPE_FP32``) and the numpy dtype.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "DataType",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "ResponseSender",
    "TensorSpec",
    "Parameters",
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

    @property
    def config_name(self) -> str:
        """Triton's model-config name, e.g. ``TYPE_FP32`` (``TYPE_STRING`` for BYTES)."""
        return "TYPE_STRING" if self is DataType.BYTES else "TYPE_" + self.value

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype holding this type (object for BYTES; uint16 bits for BF16)."""
        return _NUMPY[self]

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
        if key.startswith("TYPE_"):
            key = key[5:]
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
        dtype = np.dtype(dtype)
        if dtype.kind in "OSU":
            return cls.BYTES
        try:
            return _FROM_NUMPY[dtype.newbyteorder("=")]
        except KeyError:
            raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None


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
_FROM_NUMPY = {v: k for k, v in _NUMPY.items() if k not in (DataType.BYTES, DataType.BF16)}


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

    def check(self, array: np.ndarray, datatype: DataType, *, batching: bool, owner: str) -> None:
        """Raise :class:`InvalidInputError` unless a tensor of ``datatype`` and ``array``'s
        shape fits this spec. ``owner`` names the model in the message, e.g. ``model 'm'``.
        """
        if datatype is not self.datatype:
            raise InvalidInputError(
                f"{owner}: input '{self.name}' has datatype {datatype.value}, expected {self.datatype.value}"
            )
        expected = self.full_shape(batching)
        if not shape_matches(array.shape, expected):
            raise InvalidInputError(
                f"{owner}: input '{self.name}' has shape {list(array.shape)}, expected {list(expected)}"
            )


def shape_matches(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """True when ``actual`` fits ``expected`` (same rank, ``-1`` matches any size)."""
    return len(actual) == len(expected) and all(e == -1 or a == e for a, e in zip(actual, expected))


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

    def datatype(self, name: str) -> DataType:
        """The datatype of input ``name``.

        Raises:
            InvalidInputError: the array's numpy type has no KServe v2 datatype.
        """
        declared = self.datatypes.get(name)
        if declared is not None:
            return declared
        try:
            return DataType.from_numpy(self.inputs[name].dtype)
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
