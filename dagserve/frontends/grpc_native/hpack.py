"""HPACK (RFC 7541): the header compression of HTTP/2, as much as a gRPC server needs.

The decoder is complete: indexed fields, literals with and without indexing (and never
indexed), dynamic table size updates, Huffman-coded strings, and the dynamic table itself.
The encoder is stateless: it only writes static-table indices and literals without indexing,
so it never touches the client's decoder table; the gRPC layer precomputes its constant
blocks once.

Why not the ``hpack`` package: decoding a gRPC request's header block cost it ~35 µs (measured: 34 µs, the same block again) (a pure
Python Huffman walk per literal, a list of tuple objects per field); a gRPC client repeats the
same block for every call once its dynamic table holds the fields, so :class:`Decoder` keeps
the blocks it decoded without changing its table and answers a repeat with one dict lookup
(docs/architecture.md, "The native gRPC server").
"""

from __future__ import annotations

__all__ = ["Decoder", "HPACKError", "encode_integer", "encode_literal", "huffman_decode", "huffman_encode"]

Header = tuple[bytes, bytes]


class HPACKError(Exception):
    """A header block that cannot be decoded: the connection ends with COMPRESSION_ERROR."""


STATIC_TABLE: tuple[Header, ...] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
        (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
        (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
        ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
        ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
        ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
        ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
        ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
        ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
        ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
        ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
        ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
    )
)
"""RFC 7541 Appendix A; index 1 is the first entry."""

# RFC 7541 Appendix B: the code length of each symbol (0..255, then EOS = 256). The code is
# canonical (codes assigned in order of length, then symbol), so the lengths define it.
_CODE_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28,
    28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15,
    6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22,
    20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23,
    23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22,
    22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26,
    27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
    26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
)


def _canonical() -> tuple[dict[int, tuple[int, int]], tuple[int, ...]]:
    """Per code length: (first code, offset of its first symbol in the order); the order."""
    order = tuple(sorted(range(257), key=lambda s: (_CODE_LENGTHS[s], s)))
    first: dict[int, tuple[int, int]] = {}
    code, previous = -1, _CODE_LENGTHS[order[0]]
    for position, symbol in enumerate(order):
        length = _CODE_LENGTHS[symbol]
        code = (code + 1) << (length - previous) if position else 0
        previous = length
        first.setdefault(length, (code, position))
    return first, order


_FIRST, _ORDER = _canonical()
_LENGTHS = tuple(sorted(_FIRST))
_COUNTS = {length: sum(1 for s in range(257) if _CODE_LENGTHS[s] == length) for length in _LENGTHS}
_RANGES = tuple((length, _FIRST[length][0], _COUNTS[length], _FIRST[length][1]) for length in _LENGTHS)
_CODES = {}
for _length, _first, _count, _offset in _RANGES:
    for _i in range(_count):
        _CODES[_ORDER[_offset + _i]] = (_first + _i, _length)


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string (RFC 7541 5.2).

    Raises:
        HPACKError: an EOS symbol, padding longer than 7 bits, or padding not all ones.
    """
    value = int.from_bytes(data, "big")
    remaining = len(data) * 8
    out = bytearray()
    ranges = _RANGES
    order = _ORDER
    while remaining >= 5:
        matched = False
        for length, first, count, offset in ranges:
            if length > remaining:
                break
            index = ((value >> (remaining - length)) & ((1 << length) - 1)) - first
            if index < count:
                symbol = order[offset + index]
                if symbol == 256:
                    raise HPACKError("Huffman string contains EOS")
                out.append(symbol)
                remaining -= length
                matched = True
                break
        if not matched:
            break  # the rest is shorter than any code it starts: padding, checked below
    # What is left must be padding: fewer than 8 bits, all ones (a prefix of EOS).
    if remaining >= 8 or (value & ((1 << remaining) - 1)) != (1 << remaining) - 1:
        raise HPACKError("invalid Huffman padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code ``data`` (for tests, and for clients written over this module)."""
    value = bits = 0
    for byte in data:
        code, length = _CODES[byte]
        value = (value << length) | code
        bits += length
    pad = -bits % 8
    value = (value << pad) | ((1 << pad) - 1)
    return value.to_bytes((bits + pad) // 8, "big")


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix; ``first`` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, its name a static-table index when there is one."""
    for index, (static_name, _) in enumerate(STATIC_TABLE, 1):
        if static_name == name:
            head = encode_integer(index, 4)
            break
    else:
        head = b"\x00" + encode_integer(len(name), 7) + name
    return head + encode_integer(len(value), 7) + value


def _integer(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """Decode the integer whose prefix is in ``block[position]``: (value, next position)."""
    limit = (1 << prefix_bits) - 1
    try:
        value = block[position] & limit
        position += 1
        if value < limit:
            return value, position
        shift = 0
        while True:
            byte = block[position]
            position += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, position
            shift += 7
            if shift > 35:
                raise HPACKError("HPACK integer too large")
    except IndexError:
        raise HPACKError("header block truncated") from None


_CACHED_BLOCK_MAX = 1024
"""Longest header block kept for reuse (a warmed-up gRPC client's blocks are tens of bytes):
64 blocks of at most this bound the cache."""


class Decoder:
    """One connection's HPACK decoder: its dynamic table and the cache of repeated blocks.

    ``max_table_size`` is the SETTINGS_HEADER_TABLE_SIZE the server advertised (the most a
    client's size update may ask); ``max_header_list_size`` bounds what one block decodes to.
    """

    __slots__ = ("_cache", "_generation", "_max_list", "_size", "_table", "max_table_size", "table_size")

    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 1 << 20) -> None:
        self.max_table_size = max_table_size
        self.table_size = max_table_size  # the current limit, as the client set it
        self._max_list = max_header_list_size
        self._table: list[Header] = []  # newest first
        self._size = 0
        self._generation = 0  # changes whenever the table does: cached blocks become stale
        self._cache: dict[bytes, tuple[int, list[Header]]] = {}

    def decode(self, block: bytes) -> list[Header]:
        """The header fields of ``block`` in order, names and values as bytes.

        Raises:
            HPACKError: the block is malformed, refers to an index out of range, or decodes
                to more than ``max_header_list_size`` bytes.
        """
        cached = self._cache.get(block)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        generation = self._generation
        headers = self._decode(block)
        if self._generation == generation and len(block) <= _CACHED_BLOCK_MAX:  # did not change the table: reusable
            if len(self._cache) >= 64:
                self._cache.clear()
            self._cache[block] = (generation, headers)
        return headers

    def _field(self, index: int) -> Header:
        if 0 < index <= 61:
            return STATIC_TABLE[index - 1]
        try:
            if index <= 0:
                raise IndexError
            return self._table[index - 62]
        except IndexError:
            raise HPACKError(f"HPACK index {index} out of range") from None

    def _string(self, block: bytes, position: int) -> tuple[bytes, int]:
        if position >= len(block):
            raise HPACKError("header block truncated")
        huffman = block[position] & 0x80
        length, position = _integer(block, position, 7)
        end = position + length
        if end > len(block):
            raise HPACKError("header block truncated")
        raw = block[position:end]
        return (huffman_decode(raw) if huffman else raw), end

    def _add(self, name: bytes, value: bytes) -> None:
        self._generation += 1
        size = len(name) + len(value) + 32
        table = self._table
        self._size += size
        table.insert(0, (name, value))
        self._evict()
        if size > self.table_size:  # larger than the table: it empties it (RFC 7541 4.4)
            table.clear()
            self._size = 0

    def _evict(self) -> None:
        table = self._table
        while self._size > self.table_size and table:
            name, value = table.pop()
            self._size -= len(name) + len(value) + 32

    def _decode(self, block: bytes) -> list[Header]:
        headers: list[Header] = []
        position, end = 0, len(block)
        total = 0
        fields_seen = False
        while position < end:
            byte = block[position]
            if byte & 0x80:  # indexed field
                index, position = _integer(block, position, 7)
                if index == 0:
                    raise HPACKError("HPACK index 0")
                field = self._field(index)
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                if fields_seen:
                    raise HPACKError("table size update after a header field")
                size, position = _integer(block, position, 5)
                if size > self.max_table_size:
                    raise HPACKError(f"table size {size} above the advertised {self.max_table_size}")
                self._generation += 1
                self.table_size = size
                self._evict()
                continue
            else:
                indexing = byte & 0xC0 == 0x40
                index, position = _integer(block, position, 6 if indexing else 4)
                if index:
                    name = self._field(index)[0]
                else:
                    name, position = self._string(block, position)
                value, position = self._string(block, position)
                field = (name, value)
                if indexing:
                    self._add(name, value)
            fields_seen = True
            total += len(field[0]) + len(field[1]) + 32
            if total > self._max_list:
                raise HPACKError(f"header list larger than {self._max_list} bytes")
            headers.append(field)
        return headers
