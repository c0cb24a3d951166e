"""Tensor bytes: a tensor's wire layout, and which arrays hold a datatype.

The one place that knows the layout that the HTTP binary tensor extension, gRPC's
``raw_input_contents`` / ``raw_output_contents`` and the Python backend's
``serialize_byte_tensor`` share (Triton's layout):

* a fixed-size tensor is its elements in row-major order, little-endian; BOOL is one byte per
  element, BF16 the upper 16 bits of a float32 (dagserve holds it as uint16 in numpy);
* a BYTES tensor is, per element in row-major order, a 4-byte little-endian length and then
  that many bytes.

Decoding trusts no declared size: an element count is compared with the bytes received (every
BYTES element needs at least its 4-byte length) before anything is allocated, and each BYTES
element's length is checked against :attr:`~dagserve.limits.Limits.max_bytes_element_size`
before it is copied. Fixed-size tensors decode to read-only ``frombuffer`` views (no copy).

:func:`holds` is the one rule for "this array is of that datatype", used by the engine on
what a model returns and by both codecs before they encode.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .errors import InternalError, InvalidInputError
from .limits import DEFAULT_LIMITS, Limits
from .types import DataType, datatype_of

__all__ = [
    "LENGTH",
    "WIRE_DTYPES",
    "check_output",
    "count_bytes",
    "decode",
    "decode_bytes",
    "encode",
    "encode_bytes",
    "holds",
]

LENGTH = struct.Struct("<I")
"""The length prefix of one BYTES element."""

WIRE_DTYPES: dict[DataType, np.dtype[Any]] = {
    dt: dt.numpy_dtype.newbyteorder("<") for dt in DataType if dt is not DataType.BYTES
}
"""The little-endian numpy dtype of each fixed-size datatype on the wire (on a little-endian
host the native dtype, so ``frombuffer`` is a plain view)."""

def holds(array: Any, datatype: DataType) -> bool:
    """Whether ``array`` (numpy, or a torch / CuPy tensor) holds elements of ``datatype``.

    Byte order does not matter. A BYTES tensor is a numpy object (or ``bytes`` / ``str``)
    array; a BF16 tensor in numpy is its uint16 bit patterns (a torch tensor must be
    bfloat16). Nothing is copied or moved off a device.
    """
    if isinstance(array, np.ndarray):
        dtype, expected = array.dtype, datatype.numpy_dtype
        if dtype is expected:  # the common case: numpy's native dtypes are singletons
            return True
        if datatype is DataType.BYTES:
            return dtype.kind in "OSU"
        return bool(dtype.newbyteorder("=") == expected)
    try:
        return datatype_of(array) is datatype
    except ValueError:
        return False


def check_output(array: np.ndarray, datatype: DataType, *, name: str) -> None:
    """Raises InternalError, naming output ``name``, when ``array`` does not hold ``datatype``
    (a frontend's last check before it encodes what the engine returned)."""
    if not holds(array, datatype):
        raise InternalError(f"output '{name}' is declared {datatype.value} but the model produced {array.dtype}")


# -------------------------------------------------------------------------------- encoding


def encode(array: np.ndarray, datatype: DataType, *, name: str, copy: bool = False) -> bytes | memoryview:
    """The wire bytes of host tensor ``array`` of ``datatype``.

    A fixed-size tensor comes back as a memoryview over the array (no copy when it is already
    little-endian and contiguous), or as ``bytes`` with ``copy`` (for a protobuf field); a
    BYTES tensor as the joined elements (see :func:`encode_bytes`).

    Raises:
        InternalError: ``array`` does not hold ``datatype`` (see :func:`holds`); the message
            names output ``name``.
    """
    if datatype is DataType.BYTES:
        return encode_bytes(array)
    check_output(array, datatype, name=name)
    wire = WIRE_DTYPES[datatype]
    if array.dtype != wire:
        array = array.astype(wire)  # only for big-endian arrays; same kind and size
    if copy:
        return array.tobytes()
    array = np.ascontiguousarray(array)
    return memoryview(array).cast("B") if array.size else b""  # type: ignore[arg-type]


def encode_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor's wire bytes: per element (row-major) its 4-byte little-endian length,
    then the element. ``str`` elements are UTF-8 encoded, ``bytearray`` and ``memoryview``
    taken as their bytes, anything else encoded via ``str()``."""
    parts: list[bytes] = []
    pack = LENGTH.pack
    for value in array.reshape(-1):
        if not isinstance(value, bytes):
            if isinstance(value, str):
                value = value.encode()
            elif isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
            else:
                value = str(value).encode()
        parts.append(pack(len(value)))
        parts.append(value)
    return b"".join(parts)


# -------------------------------------------------------------------------------- decoding


def decode(
    data: bytes | memoryview,
    datatype: DataType,
    shape: tuple[int, ...],
    count: int,
    *,
    name: str,
    limits: Limits = DEFAULT_LIMITS,
) -> np.ndarray:
    """The tensor of ``shape`` (``count`` elements, already checked against ``limits``) that
    ``data`` holds: a read-only view for a fixed-size datatype, an object array of ``bytes``
    for BYTES.

    Raises:
        InvalidInputError: ``data`` is not exactly the size the shape needs, or its BYTES
            elements are malformed or over ``limits``; the message names input ``name``.
    """
    if datatype is DataType.BYTES:
        return decode_bytes(data, name=name, count=count, limits=limits).reshape(shape)
    wire = WIRE_DTYPES[datatype]
    needed = count * wire.itemsize
    if len(data) != needed:
        raise InvalidInputError(
            f"input '{name}': shape {list(shape)} of {datatype.value} needs {needed} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=wire, count=count).reshape(shape)


def count_bytes(data: bytes | memoryview, *, name: str, limits: Limits = DEFAULT_LIMITS) -> int:
    """How many BYTES elements ``data`` holds, allocating nothing.

    Raises:
        InvalidInputError: the data is truncated, or an element is over ``limits``.
    """
    count = offset = 0
    end = len(data)
    unpack = LENGTH.unpack_from
    while offset < end:
        if offset + 4 > end:
            raise InvalidInputError(f"input '{name}': BYTES data ends inside a length prefix")
        length = unpack(data, offset)[0]
        if length > limits.max_bytes_element_size:
            limits.check_bytes_element(name, count, length)
        offset += 4 + length
        count += 1
    if offset != end:
        raise InvalidInputError(f"input '{name}': BYTES element {count - 1} runs past the end of its data")
    return count


def decode_bytes(
    data: bytes | memoryview, *, name: str, count: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> np.ndarray:
    """A flat object array of the ``bytes`` elements in BYTES wire ``data``; ``count`` is how
    many its shape needs (``None``: as many as there are).

    Raises:
        InvalidInputError: the data is truncated, holds another number of elements than
            ``count``, or an element is over ``limits``; the message names input ``name``.
    """
    view = memoryview(data)
    end = len(view)
    if count is None:
        count = count_bytes(view, name=name, limits=limits)
    # Every element needs at least its 4-byte length: checked before allocating ``count`` slots.
    if count * 4 > end:
        raise InvalidInputError(f"input '{name}': BYTES data of {end} bytes cannot hold {count} elements")
    out = np.empty(count, dtype=np.object_)
    offset = 0
    unpack = LENGTH.unpack_from
    for i in range(count):
        if offset + 4 > end:
            where = f"holds only {i} elements" if offset == end else "ends inside a length prefix"
            raise InvalidInputError(f"input '{name}': BYTES data {where}, its shape needs {count}")
        length = unpack(view, offset)[0]
        offset += 4
        if length > limits.max_bytes_element_size:
            limits.check_bytes_element(name, i, length)
        if offset + length > end:
            raise InvalidInputError(
                f"input '{name}': BYTES element {i} claims {length} bytes, only {end - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        extra = count_bytes(view[offset:], name=name, limits=limits)
        raise InvalidInputError(f"input '{name}': BYTES data holds {count + extra} elements, its shape needs {count}")
    return out
