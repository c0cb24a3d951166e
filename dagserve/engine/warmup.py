"""Model warmup: synthetic requests run on every instance before a model version is READY.

The config's ``model_warmup`` is Triton's ``ModelWarmup`` list::

    model_warmup [{
      name: "zeros"
      batch_size: 8
      count: 2
      inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [16] zero_data: true } }
    }]

Each sample builds ``batch_size`` requests (each of batch 1 when the model batches) and runs
them as one batch on each instance, ``count`` times (at least once). Input data is zeros
(``zero_data``), random values (``random_data``; floats in [0, 1), integers in [0, 10), bools;
BYTES elements are empty either way) or the raw contents of a file in ``<model>/warmup/``
(``input_data_file``: the tensor's elements in row-major order, little-endian; BYTES elements
each prefixed by a 4-byte little-endian length, as Triton's binary format).

Loading such a model costs the warmup time, and a warmup that fails makes the load FAILED with
the reason, so a model that cannot run is never marked READY.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..backends.base import ModelInstance
from ..errors import ConfigError, DagserveError, ModelExecutionError
from ..repository.config import ModelConfig
from ..types import DataType, InferRequest, TensorSpec

__all__ = ["WarmupSample", "parse_warmup", "warm_up"]

_SAMPLE_KEYS = {"name", "batch_size", "inputs", "count"}
_INPUT_KEYS = {"data_type", "dims", "zero_data", "random_data", "input_data_file"}


@dataclass(frozen=True, kw_only=True, slots=True)
class WarmupSample:
    """One ``model_warmup`` entry, checked against the model's inputs."""

    name: str
    count: int
    requests: tuple[InferRequest, ...]


async def warm_up(
    config: ModelConfig,
    instances: Sequence[ModelInstance],
    *,
    model_dir: Path,
    owner: str,
) -> None:
    """Run every warmup sample of ``config`` on every instance, one instance at a time.

    ``owner`` names the model in messages (``model 'm' version 1``). Does nothing when the
    config has no ``model_warmup``. Cancellation stops between executions of blocking backends
    (a running ``execute`` finishes in its thread).

    Raises:
        ConfigError: a sample is malformed (unknown input, wrong datatype or dims, missing file).
        ModelExecutionError: an instance failed a warmup request; the message has its reason.
    """
    if not config.model_warmup:
        return
    samples = await anyio.to_thread.run_sync(parse_warmup, config, model_dir, owner)
    for index, instance in enumerate(instances):
        for sample in samples:
            for _ in range(sample.count):
                results = await _execute(instance, sample.requests)
                _check(results, sample, index, owner)


def parse_warmup(config: ModelConfig, model_dir: Path, owner: str) -> list[WarmupSample]:
    """The config's warmup samples with their request data built (blocking: reads files).

    Raises:
        ConfigError: naming the sample and the field at fault.
    """
    specs = config.input_specs()
    samples = []
    for position, raw in enumerate(config.model_warmup):
        label = f"{owner}: model_warmup[{position}]"
        unknown = set(raw) - _SAMPLE_KEYS
        if unknown:
            raise ConfigError(f"{label}: unknown field(s) {', '.join(sorted(unknown))}")
        name = str(raw.get("name", "")) or f"sample{position}"
        label = f"{owner}: warmup sample '{name}'"
        batch_size = _int(raw.get("batch_size", 1), label, "batch_size") or 1
        count = _int(raw.get("count", 1), label, "count") or 1
        if config.batching and batch_size > config.max_batch_size:
            raise ConfigError(
                f"{label}: batch_size {batch_size} exceeds the model's max_batch_size {config.max_batch_size}"
            )
        if not config.batching and batch_size != 1:
            raise ConfigError(f"{label}: batch_size must be 1 for a model that does not batch (max_batch_size 0)")
        inputs = raw.get("inputs") or {}
        if not isinstance(inputs, Mapping):
            raise ConfigError(f"{label}: 'inputs' must map input names to their data")
        for input_name in inputs:
            if input_name not in specs:
                raise ConfigError(f"{label}: the model has no input '{input_name}' (its inputs: {', '.join(specs)})")
        missing = [n for n, s in specs.items() if not s.optional and n not in inputs]
        if missing:
            raise ConfigError(f"{label}: no data for input(s) {', '.join(missing)}")
        arrays: dict[str, np.ndarray] = {}
        datatypes: dict[str, DataType] = {}
        for input_name, spec_raw in inputs.items():
            arrays[input_name], datatypes[input_name] = _input_data(
                specs[input_name], spec_raw, model_dir, f"{label}: input '{input_name}'"
            )
        requests = tuple(_request(arrays, datatypes, config.batching, name, i) for i in range(batch_size))
        samples.append(WarmupSample(name=name, count=count, requests=requests))
    return samples


def _request(
    arrays: Mapping[str, np.ndarray], datatypes: Mapping[str, DataType], batching: bool, name: str, i: int
) -> InferRequest:
    inputs = {n: a[np.newaxis] if batching else a for n, a in arrays.items()}
    bf16 = {n: d for n, d in datatypes.items() if d is DataType.BF16}
    return InferRequest(inputs=inputs, datatypes=bf16, id=f"warmup:{name}:{i}")


def _input_data(spec: TensorSpec, raw: Any, model_dir: Path, label: str) -> tuple[np.ndarray, DataType]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{label}: expected data_type, dims and one of zero_data, random_data, input_data_file")
    unknown = set(raw) - _INPUT_KEYS
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        datatype = DataType.parse(str(raw.get("data_type", "")))
    except ValueError:
        raise ConfigError(f"{label}: data_type {raw.get('data_type')!r} is no datatype") from None
    if datatype is not spec.datatype:
        raise ConfigError(f"{label}: data_type {datatype.config_name}, but the input is {spec.datatype.config_name}")
    dims = tuple(_int(d, label, "dims") for d in raw.get("dims", ()))
    if any(d < 1 for d in dims):
        raise ConfigError(f"{label}: dims {list(dims)} must be concrete sizes (no -1)")
    if len(dims) != len(spec.shape) or any(e != -1 and d != e for d, e in zip(dims, spec.shape)):
        raise ConfigError(f"{label}: dims {list(dims)} do not fit the input's dims {list(spec.shape)}")
    sources = [k for k in ("zero_data", "random_data", "input_data_file") if raw.get(k)]
    if len(sources) != 1:
        raise ConfigError(f"{label}: set exactly one of zero_data, random_data, input_data_file")
    if sources[0] == "input_data_file":
        return _from_file(model_dir / "warmup" / str(raw["input_data_file"]), datatype, dims, label), datatype
    if sources[0] == "random_data":
        return _random(datatype, dims), datatype
    return _zeros(datatype, dims), datatype


def _zeros(datatype: DataType, dims: tuple[int, ...]) -> np.ndarray:
    if datatype is DataType.BYTES:
        return np.full(dims, b"", dtype=np.object_)
    return np.zeros(dims, dtype=datatype.numpy_dtype)


def _random(datatype: DataType, dims: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng()
    dtype = datatype.numpy_dtype
    if datatype is DataType.BYTES:
        return _zeros(datatype, dims)
    if datatype is DataType.BOOL:
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    if datatype is DataType.BF16:
        # bfloat16 bit patterns of values in [0, 1): the top half of float32 values.
        return (rng.random(dims, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dtype.kind == "f":
        return rng.random(dims).astype(dtype)
    return rng.integers(0, 10, size=dims).astype(dtype)


def _from_file(path: Path, datatype: DataType, dims: tuple[int, ...], label: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read input_data_file {path}: {exc.strerror}") from None
    count = int(np.prod(dims, dtype=np.int64))
    if datatype is DataType.BYTES:
        items, offset = [], 0
        for _ in range(count):
            if offset + 4 > len(data):
                raise ConfigError(f"{label}: {path} holds fewer than {count} length-prefixed BYTES elements")
            size = int.from_bytes(data[offset:offset + 4], "little")
            items.append(data[offset + 4:offset + 4 + size])
            offset += 4 + size
        return np.array(items, dtype=np.object_).reshape(dims)
    dtype = datatype.numpy_dtype.newbyteorder("<")
    needed = count * dtype.itemsize
    if len(data) < needed:
        raise ConfigError(f"{label}: {path} has {len(data)} bytes, dims {list(dims)} need {needed}")
    return np.frombuffer(data, dtype=dtype, count=count).astype(dtype.newbyteorder("=")).reshape(dims)


def _int(value: Any, label: str, field: str) -> int:
    try:
        return int(value)  # pbtxt's int64 fields arrive as strings
    except (TypeError, ValueError):
        raise ConfigError(f"{label}: {field} must be an integer, not {value!r}") from None


async def _execute(instance: ModelInstance, requests: Sequence[InferRequest]) -> Sequence[Any]:
    # The same three ways InstancePool runs a batch; warmup runs before the pool exists.
    try:
        if instance.mode == "thread":
            return await anyio.to_thread.run_sync(instance.execute, requests)  # type: ignore[no-any-return]
        if instance.mode == "async":
            return await instance.execute(requests)  # type: ignore[no-any-return]
        return instance.execute(requests)  # type: ignore[no-any-return]
    except DagserveError as exc:
        return [exc] * len(requests)
    except Exception as exc:  # noqa: BLE001 - a backend raising is a failed warmup, not a crash
        return [exc] * len(requests)


def _check(results: Sequence[Any], sample: WarmupSample, index: int, owner: str) -> None:
    where = f"{owner}: warmup sample '{sample.name}' failed on instance {index}"
    if len(results) != len(sample.requests):
        raise ModelExecutionError(f"{where}: {len(results)} results for {len(sample.requests)} requests")
    for result in results:
        if isinstance(result, BaseException):
            reason = str(result) if isinstance(result, DagserveError) else f"{type(result).__name__}: {result}"
            raise ModelExecutionError(f"{where}: {reason}")
