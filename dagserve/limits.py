"""Limits on what one request may ask the server to allocate, checked before it allocates.

The body / message size limits bound the bytes a client sends (``--http-max-body-size``,
``--grpc-max-message-size``); these bound what the server builds from them, and each is checked
from the declared sizes *before* any array is created or any JSON parsed:

=================================  ==========================  =============================
limit                              flag (env ``DAGSERVE_*``)   default
=================================  ==========================  =============================
elements in one tensor             ``--max-tensor-elements``   2**31 - 1 (as Triton's int32)
inputs in one request              ``--max-inputs``            1024
bytes in one BYTES element         ``--max-bytes-element-size`` 256 MiB
nesting depth of a JSON body       ``--max-json-depth``        64
=================================  ==========================  =============================

Every refusal is an :class:`~dagserve.errors.InvalidInputError` (400 / ``INVALID_ARGUMENT``)
naming the input, the limit and the flag that raises it. This module imports no transport, so
the codecs of both frontends and the engine share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

__all__ = ["DEFAULT_LIMITS", "Limits", "json_depth"]

_QUOTE = ord('"')
_BACKSLASH = ord("\\")
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Per-request allocation limits (see the module table). Each must be positive."""

    max_tensor_elements: int = 2**31 - 1
    max_inputs: int = 1024
    max_bytes_element_size: int = 256 * 1024 * 1024
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        for name in ("max_tensor_elements", "max_inputs", "max_bytes_element_size", "max_json_depth"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def check_inputs(self, count: int) -> None:
        """Raises InvalidInputError when a request has more than ``max_inputs`` inputs."""
        if count > self.max_inputs:
            raise InvalidInputError(
                f"request has {count} inputs, more than the server's limit of {self.max_inputs} (--max-inputs)"
            )

    def check_elements(self, name: str, shape: tuple[int, ...] | list[int], count: int) -> None:
        """Raises InvalidInputError when input ``name``'s shape holds more than
        ``max_tensor_elements`` elements (``count`` is the product of ``shape``), or, for an
        empty tensor, when its non-zero dimensions multiply past that limit (numpy refuses to
        shape even an empty array as ``[0, 2**62]``)."""
        if count > self.max_tensor_elements:
            raise InvalidInputError(
                f"input '{name}': shape {list(shape)} is too large: {count} elements, more than the server's limit "
                f"of {self.max_tensor_elements} (--max-tensor-elements)"
            )
        if count == 0:
            span = 1
            for d in shape:
                span *= d or 1
            if span > self.max_tensor_elements:
                raise InvalidInputError(
                    f"input '{name}': shape {list(shape)} is too large: its non-zero dimensions multiply to "
                    f"{span}, more than the server's limit of {self.max_tensor_elements} (--max-tensor-elements)"
                )

    def check_bytes_element(self, name: str, index: int, length: int) -> None:
        """Raises InvalidInputError when BYTES element ``index`` of input ``name`` is longer
        than ``max_bytes_element_size``."""
        if length > self.max_bytes_element_size:
            raise InvalidInputError(
                f"input '{name}': BYTES element {index} is {length} bytes, more than the server's limit "
                f"of {self.max_bytes_element_size} (--max-bytes-element-size)"
            )

    def check_json(self, text: bytes | str, what: str = "request body") -> None:
        """Raises InvalidInputError when the JSON ``text`` nests arrays and objects deeper than
        ``max_json_depth``. Call it before ``json.loads``: a body with fewer brackets than the
        limit is passed without a scan."""
        data = text.encode() if isinstance(text, str) else text
        limit = self.max_json_depth
        if data.count(b"[") + data.count(b"{") <= limit:
            return
        depth = json_depth(data)
        if depth > limit:
            raise InvalidInputError(
                f"{what}: JSON nests {depth} levels deep, more than the server's limit of {limit} (--max-json-depth)"
            )


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in JSON ``data``, brackets inside strings not
    counted. Vectorized (numpy) over the structural characters only, so it costs about 1 ms
    per megabyte; on text that is not valid JSON the answer is only an estimate (the parser
    reports such text anyway)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size == 0:
        return 0
    quotes = raw == _QUOTE
    if b'\\"' in data:
        # A quote preceded by an odd run of backslashes is escaped, not the end of a string.
        backslash = raw == _BACKSLASH
        # Only quotes right after a backslash need the (short) backward walk.
        for i in np.flatnonzero(quotes[1:] & backslash[:-1]) + 1:
            j = i - 1
            while j >= 0 and backslash[j]:
                j -= 1
            if (i - 1 - j) % 2:
                quotes[i] = False
    step = _STEP[raw]  # +1 for [ {, -1 for ] }, 0 otherwise
    where = np.flatnonzero(quotes | (step != 0))  # the few structural positions
    in_string = (np.cumsum(quotes[where], dtype=np.int64) & 1).astype(bool)
    levels = np.cumsum(np.where(in_string, 0, step[where]), dtype=np.int64)
    return int(levels.max(initial=0))


DEFAULT_LIMITS = Limits()
