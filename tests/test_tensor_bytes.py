"""The one tensor-bytes module: the layout every encoder shares and the one datatype rule."""

from __future__ import annotations

import numpy as np
import pytest

from dagserve import tensor_bytes
from dagserve.backends import pb_utils
from dagserve.errors import InternalError, InvalidInputError
from dagserve.limits import Limits
from dagserve.types import DataType


def test_pb_utils_serializes_as_the_wire_does() -> None:
    """pb_utils.serialize_byte_tensor writes the bytes the codecs write, and its inverse reads them."""
    array = np.array([[b"a", "\u00e9"], [b"", bytearray(b"xy")]], dtype=np.object_)
    wire = tensor_bytes.encode_bytes(array)
    serialized = pb_utils.serialize_byte_tensor(array)
    assert serialized.item() == wire
    assert pb_utils.deserialize_bytes_tensor(wire).tolist() == [b"a", "\u00e9".encode(), b"", b"xy"]


def test_truncated_serialized_bytes_are_refused() -> None:
    """deserialize_bytes_tensor refuses an element that runs past the data (it used to cut it short)."""
    with pytest.raises(InvalidInputError, match="runs past the end"):
        pb_utils.deserialize_bytes_tensor(b"\x05\x00\x00\x00abc")


def test_element_limit_is_checked_before_copying() -> None:
    """A BYTES element over max_bytes_element_size is refused by its declared length."""
    data = b"\x00\x00\x00\x10"  # claims 256 MiB, holds nothing
    with pytest.raises(InvalidInputError, match="--max-bytes-element-size"):
        tensor_bytes.decode_bytes(data, name="S", count=1, limits=Limits(max_bytes_element_size=8))


@pytest.mark.parametrize(
    ("array", "datatype", "ok"),
    [
        (np.zeros(2, np.float32), DataType.FP32, True),
        (np.zeros(2, ">f4"), DataType.FP32, True),
        (np.zeros(2, np.float64), DataType.FP32, False),
        (np.zeros(2, np.uint16), DataType.BF16, True),
        (np.zeros(2, np.float32), DataType.BF16, False),
        (np.array([b"a"], np.object_), DataType.BYTES, True),
        (np.zeros(2, np.int32), DataType.BYTES, False),
    ],
)
def test_one_rule_for_which_array_holds_a_datatype(array: np.ndarray, datatype: DataType, ok: bool) -> None:
    """holds() is the engine's and both codecs' rule; encode refuses what it refuses."""
    assert tensor_bytes.holds(array, datatype) is ok
    if not ok and datatype is not DataType.BYTES:
        with pytest.raises(InternalError, match="is declared"):
            tensor_bytes.encode(array, datatype, name="Y")


def test_fixed_size_round_trip_is_little_endian() -> None:
    """encode writes little-endian bytes (also from a big-endian array) and decode views them."""
    array = np.arange(3, dtype=">i4")
    raw = bytes(tensor_bytes.encode(array, DataType.INT32, name="Y"))
    assert raw == np.arange(3, dtype="<i4").tobytes()
    back = tensor_bytes.decode(raw, DataType.INT32, (3,), 3, name="X")
    assert back.tolist() == [0, 1, 2] and not back.flags.writeable
