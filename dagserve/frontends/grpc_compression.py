"""Compressed inference responses over gRPC: Triton's ``--grpc-infer-response-compression-level``.

What Triton and gRPC do, which both gRPC servers follow:

* Triton sets the level on its ModelInfer and ModelStreamInfer calls only
  (``ServerContext::set_compression_level`` in src/grpc/infer_handler.cc and
  stream_infer_handler.cc); every other method answers uncompressed.
* gRPC's core turns the level into an algorithm per call, from the client's
  ``grpc-accept-encoding`` (``CompressionAlgorithmForLevel``,
  src/core/lib/compression/compression_internal.cc): of gzip and deflate, in that order, the
  ones the client accepts; ``low`` takes the first, ``medium`` the middle one (index
  ``n // 2``), ``high`` the last. A client that accepts neither (or sends no
  ``grpc-accept-encoding``) gets uncompressed responses. gRPC's own clients accept both, so
  ``low`` answers gzip and ``medium`` / ``high`` deflate.
* The response HEADERS name the algorithm (``grpc-encoding``) and every message of the call
  is compressed on its own (flag byte 1), unless compressing does not make it smaller: then
  it goes as it is (flag 0) (``CompressMessage``, src/core/ext/filters/http/message_compress).

gRPC's core compresses at zlib's default level (6) whatever the level; the native server
(:mod:`.grpc_native`) also turns the level into zlib's effort: :data:`ZLIB_LEVELS`.
"""

from __future__ import annotations

import functools
import zlib

__all__ = [
    "COMPRESSED_METHODS",
    "COMPRESSION_LEVELS",
    "ZLIB_LEVELS",
    "compressed_message",
    "grpc_level",
    "response_encoding",
]

COMPRESSION_LEVELS = ("none", "low", "medium", "high")
"""The levels, Triton's names; ``none`` (the default) compresses nothing."""
COMPRESSED_METHODS = frozenset(("ModelInfer", "ModelStreamInfer"))
"""The methods whose responses a level compresses, as on Triton."""
ZLIB_LEVELS = {"low": 1, "medium": 6, "high": 9}
"""zlib's level for each level, on the native server: fastest, zlib's default (what gRPC's
core uses at every level), smallest."""
_ALGORITHMS = ((b"gzip", 31), (b"deflate", 15))
"""gRPC's ranking of its algorithms and zlib's ``wbits`` for each: a gzip wrapper, a zlib
wrapper (gRPC's ``deflate`` is RFC 1950 zlib data)."""


def grpc_level(level: str) -> int:
    """gRPC's ``grpc_compression_level`` for ``level`` (0 none .. 3 high): grpcio's
    ``grpc.default_compression_level`` channel argument.

    Raises:
        ValueError: ``level`` is not one of :data:`COMPRESSION_LEVELS`.
    """
    try:
        return COMPRESSION_LEVELS.index(level)
    except ValueError:
        raise ValueError(
            f"--grpc-infer-response-compression-level must be one of {', '.join(COMPRESSION_LEVELS)}, got {level!r}"
        ) from None


@functools.lru_cache(maxsize=64)
def response_encoding(level: str, accept_encoding: bytes) -> tuple[bytes, int] | None:
    """``(grpc-encoding, zlib wbits)`` of a response at ``level`` to a client that sent
    ``accept_encoding`` (its ``grpc-accept-encoding`` value, ``b""`` if none), chosen as gRPC's
    core chooses; ``None``: not compressed."""
    accepted = {name.strip() for name in accept_encoding.split(b",")}
    candidates = [algorithm for algorithm in _ALGORITHMS if algorithm[0] in accepted]
    if level == "none" or not candidates:
        return None
    if level == "low":
        return candidates[0]
    if level == "medium":
        return candidates[len(candidates) // 2]
    return candidates[-1]  # high


def compressed_message(payload: bytes, wbits: int, zlib_level: int) -> bytes:
    """``payload`` as a length-prefixed gRPC message: compressed (flag 1) with ``wbits``'s
    wrapper at ``zlib_level``, or as it is (flag 0) when compressing does not make it
    smaller, as gRPC does. Blocks for as long as zlib takes (it releases the GIL)."""
    packed = zlib.compress(payload, zlib_level, wbits)
    if len(packed) < len(payload):
        return b"\1" + len(packed).to_bytes(4, "big") + packed
    return b"\0" + len(payload).to_bytes(4, "big") + payload
