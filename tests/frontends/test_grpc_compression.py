"""How a compression level becomes a response's algorithm and bytes (gRPC core's rules, which
Triton's ``--grpc-infer-response-compression-level`` relies on); the wire is tested in
test_grpc_native.py, on both gRPC servers."""

from __future__ import annotations

import os
import zlib

import pytest

from dagserve.frontends.grpc_compression import compressed_message, grpc_level, response_encoding


@pytest.mark.parametrize("accept, low, medium, high", [
    (b"identity, deflate, gzip", b"gzip", b"deflate", b"deflate"),  # what gRPC's own clients send
    (b"gzip,deflate", b"gzip", b"deflate", b"deflate"),
    (b"gzip", b"gzip", b"gzip", b"gzip"),
    (b" deflate ,br", b"deflate", b"deflate", b"deflate"),
    (b"identity", None, None, None),
    (b"", None, None, None),
    (b"GZIP, x-gzip", None, None, None),  # gRPC's names are exact
])
def test_level_picks_the_algorithm_grpc_picks(accept: bytes, low: bytes | None, medium: bytes | None,
                                             high: bytes | None) -> None:
    """Of gzip and deflate, in that order, those the client accepts: low takes the first,
    medium the middle one, high the last; none accepted, or level none: no compression."""
    for level, wanted in (("none", None), ("low", low), ("medium", medium), ("high", high)):
        encoding = response_encoding(level, accept)
        assert (encoding[0] if encoding is not None else None) == wanted, level


@pytest.mark.parametrize("encoding, wbits", [(b"gzip", 31), (b"deflate", 15)])
def test_message_is_compressed_only_when_smaller(encoding: bytes, wbits: int) -> None:
    """A compressible payload goes with flag 1 and zlib data of the encoding's wrapper; one that
    compression does not shrink (random bytes, empty) goes as it is with flag 0."""
    assert response_encoding("high", encoding) == (encoding, wbits)
    payload = b"tensor " * 1000
    message = compressed_message(payload, wbits, 9)
    assert message[0] == 1 and int.from_bytes(message[1:5], "big") == len(message) - 5 < len(payload)
    assert zlib.decompress(message[5:], wbits) == payload
    for payload in (os.urandom(4096), b""):
        assert compressed_message(payload, wbits, 1) == b"\0" + len(payload).to_bytes(4, "big") + payload


def test_levels_are_grpcs_and_others_are_refused() -> None:
    assert [grpc_level(level) for level in ("none", "low", "medium", "high")] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="none, low, medium, high"):
        grpc_level("max")
