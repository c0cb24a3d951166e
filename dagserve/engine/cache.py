"""The response cache: answers repeated requests without running the model.

One cache per server, shared by every model whose config says ``response_cache { enable:
true }`` (Triton's ``local`` cache). Entries are keyed by model, version, the input tensors
(names, datatypes, shapes and bytes) and the requested outputs; they hold the outputs and are
evicted least-recently-used once their total size passes the configured byte budget. Cached
arrays are read-only so no caller can change what another one receives.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..types import InferRequest

__all__ = ["ResponseCache", "request_key"]


def request_key(model: str, version: str, request: InferRequest) -> bytes:
    """A digest identifying what a request asks of one model version."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{model}\0{version}\0".encode())
    for name in sorted(request.inputs):
        array = request.inputs[name]
        h.update(f"{name}\0{request.datatype(name).value}\0{array.shape}\0".encode())
        if array.dtype == np.object_:
            for item in array.reshape(-1):
                data = item if isinstance(item, bytes) else str(item).encode()
                h.update(struct.pack("<I", len(data)))
                h.update(data)
        else:
            h.update(np.ascontiguousarray(array).data)
    h.update(repr(request.output_names()).encode())
    return h.digest()


def _size(outputs: Mapping[str, np.ndarray]) -> int:
    total = 0
    for array in outputs.values():
        if array.dtype == np.object_:
            total += sum(len(x) if isinstance(x, bytes) else 64 for x in array.reshape(-1)) + 8 * array.size
        else:
            total += array.nbytes
    return total + 64


class ResponseCache:
    """A byte-bounded LRU map from :func:`request_key` to outputs."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._entries: OrderedDict[bytes, tuple[Mapping[str, np.ndarray], int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.lookup_ns = 0  # time in get() and put(), for Triton's local-cache metrics
        self.insertion_ns = 0

    def get(self, key: bytes) -> Mapping[str, np.ndarray] | None:
        start = time.perf_counter_ns()
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            self.lookup_ns += time.perf_counter_ns() - start
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        self.lookup_ns += time.perf_counter_ns() - start
        return entry[0]

    def put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        """Store ``outputs`` (made read-only); an entry larger than the whole cache is skipped."""
        start = time.perf_counter_ns()
        try:
            self._put(key, outputs)
        finally:
            self.insertion_ns += time.perf_counter_ns() - start

    def _put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        size = _size(outputs)
        if size > self.capacity or key in self._entries:
            return
        frozen = {}
        for name, array in outputs.items():
            array = np.array(array, copy=True)
            array.flags.writeable = False
            frozen[name] = array
        self._entries[key] = (frozen, size)
        self._bytes += size
        while self._bytes > self.capacity:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
            self.evictions += 1

    def statistics(self) -> dict[str, float]:
        """Counts and sizes; ``lookups`` = hits + misses, ``util`` = bytes / capacity,
        ``lookup_us`` / ``insertion_us`` the total time in lookups and inserts."""
        return {
            "lookups": self.hits + self.misses,
            "util": self._bytes / self.capacity if self.capacity else 0.0,
            "lookup_us": self.lookup_ns / 1e3,
            "insertion_us": self.insertion_ns / 1e3,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "capacity": self.capacity,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
