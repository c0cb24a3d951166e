"""The response cache: hits skip execution, show in statistics, and respect the byte budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dagserve import InferRequest, Server, ServerOptions
from dagserve.engine.cache import ResponseCache, request_key

pytestmark = pytest.mark.anyio

MODEL = '''
import numpy as np

CALLS = [0]

def infer(inputs):
    CALLS[0] += 1
    return {"Y": inputs["X"] * 2, "CALLS": np.array([CALLS[0]], dtype=np.int64)}
'''


def make_repo(tmp_path: Path, cache: bool) -> Path:
    model = tmp_path / "double"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL)
    (model / "config.yaml").write_text(
        f"""
backend: python
response_cache: {{enable: {str(cache).lower()}}}
inputs: [{{name: X, datatype: FP32, shape: [3]}}]
outputs: [{{name: Y, datatype: FP32, shape: [3]}}, {{name: CALLS, datatype: INT64, shape: [1]}}]
"""
    )
    return tmp_path


async def test_cache_hit_skips_execution(tmp_path: Path) -> None:
    options = ServerOptions(model_repository=make_repo(tmp_path, True), response_cache_bytes=1 << 20)
    async with Server(options) as server:
        x = np.array([1, 2, 3], np.float32)
        first = await server.infer("double", "", InferRequest(inputs={"X": x}))
        second = await server.infer("double", "", InferRequest(inputs={"X": x.copy()}))
        other = await server.infer("double", "", InferRequest(inputs={"X": x + 1}))
        stats = server.statistics("double")["model_stats"][0]
    assert first.outputs["CALLS"][0] == second.outputs["CALLS"][0] == 1
    assert other.outputs["CALLS"][0] == 2
    np.testing.assert_array_equal(second.outputs["Y"], [2, 4, 6])
    assert stats["inference_stats"]["cache_hit"]["count"] == 1
    assert stats["inference_stats"]["cache_miss"]["count"] == 2
    assert stats["inference_stats"]["success"]["count"] == 3
    assert stats["execution_count"] == 2


async def test_no_cache_without_opt_in(tmp_path: Path) -> None:
    options = ServerOptions(model_repository=make_repo(tmp_path, False), response_cache_bytes=1 << 20)
    async with Server(options) as server:
        x = np.array([1, 2, 3], np.float32)
        await server.infer("double", "", InferRequest(inputs={"X": x}))
        again = await server.infer("double", "", InferRequest(inputs={"X": x}))
    assert again.outputs["CALLS"][0] == 2


def test_lru_eviction_keeps_within_budget() -> None:
    cache = ResponseCache(capacity_bytes=1000)
    keys = [request_key("m", "1", InferRequest(inputs={"X": np.full(4, i, np.float32)})) for i in range(10)]
    for key in keys:
        cache.put(key, {"Y": np.zeros(100, np.float32)})
    stats = cache.statistics()
    assert stats["bytes"] <= 1000 and stats["evictions"] > 0
    assert cache.get(keys[-1]) is not None and cache.get(keys[0]) is None


def test_keys_depend_on_dtype_shape_and_bytes() -> None:
    def key(x: np.ndarray) -> bytes:
        return request_key("m", "1", InferRequest(inputs={"X": x}))

    base = np.zeros(4, np.float32)
    assert key(base) == key(base.copy())
    assert key(base) != key(base.reshape(2, 2))
    assert key(base) != key(np.zeros(4, np.int32))
    assert key(np.array([b"ab", b"c"], object)) != key(np.array([b"a", b"bc"], object))
