"""``@dagserve.function``: declarations checked against the function, datatypes from numpy
annotations, and what a call returns matched to the declared outputs."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

import dagserve
from dagserve import ConfigError, DataType, ModelExecutionError, Pipeline


def test_annotations_give_datatypes_and_the_function_stays_callable() -> None:
    """Shapes alone plus NDArray annotations make typed inputs/outputs; calling the result
    calls the function."""

    @dagserve.function(inputs={"a": [2], "b": ("INT64", [-1])}, outputs={"s": [2], "n": [1]}, max_batch_size=4)
    def f(a: NDArray[np.float32], b: NDArray[np.int64]) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
        return a, b[:, :1].astype(np.int32)

    assert [(t.name, t.datatype, t.shape) for t in f.inputs] == [("a", DataType.FP32, (2,)), ("b", DataType.INT64, (-1,))]
    assert [(t.name, t.datatype) for t in f.outputs] == [("s", DataType.FP32), ("n", DataType.INT32)]
    assert f(np.ones(2, np.float32), np.ones((1, 3), np.int64))[1].dtype == np.int32
    config = f.config("p.f")
    assert config.name == "p.f" and config.max_batch_size == 4 and config.dynamic_batching is not None
    assert config.parameters["execution"] == "thread"


def test_returns_are_matched_to_declared_outputs() -> None:
    """A bare array for one output, a dict by name, a tuple in order; lists become the
    declared datatype; a wrong count is an error naming the function."""

    @dagserve.function(inputs={"x": ("FP32", [1])}, outputs={"y": ("INT64", [1])})
    def one(x):
        return [1]

    assert one.infer({"x": np.ones(1, np.float32)})["y"].dtype == np.int64

    @dagserve.function(inputs={"x": ("FP32", [1])}, outputs={"a": ("FP32", [1]), "b": ("FP32", [1])})
    def two(x):
        return x

    with pytest.raises(ModelExecutionError, match=r"returned a ndarray; it declares 2 outputs \(a, b\)"):
        two.infer({"x": np.ones(1, np.float32)})


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({"x": [2]}, {"y": ("FP32", [2])}, r"input 'x': give its datatype"),
        ({"x": ("FP32", [2]), "z": ("FP32", [1])}, {"y": ("FP32", [2])}, r"input 'z' is not a keyword parameter"),
        ({}, {"y": ("FP32", [2])}, r"parameter 'x' has no default and is not a declared input"),
        ({"x": ("FP33", [2])}, {"y": ("FP32", [2])}, r"input 'x': 'FP33' is not a datatype"),
        ({"x": ("FP32", [0])}, {"y": ("FP32", [2])}, r"invalid dimension"),
        ({"x": ("FP32", [2])}, {}, r"declare at least one output"),
    ],
)
def test_bad_declarations_name_the_function_and_its_line(inputs: dict, outputs: dict, message: str) -> None:
    """Every declaration error names this file, the decorator's line and the function."""
    with pytest.raises(ConfigError, match=message) as caught:

        @dagserve.function(inputs=inputs, outputs=outputs)
        def f(x):
            return x

    assert f"{__file__}:" in str(caught.value) and "function 'test_bad_declarations" in str(caught.value)


def test_dsl_function_step_model_takes_the_pipeline_name() -> None:
    """A function step's model is <pipeline>.<step>, also after the spec is renamed; a plain
    callable is refused with the hint to declare it."""
    p = Pipeline("p")

    @p.function(inputs={"x": ("FP32", [1])}, outputs={"y": ("FP32", [1])})
    def f(x):
        return x

    p.step("s", f, inputs={"x": p.input("X", "FP32", [1])})
    spec = p.build()
    assert spec.step("s").model == "p.s" and spec.step("s").function is f
    import dataclasses

    assert dataclasses.replace(spec, name="q").step("s").model == "q.s"
    with pytest.raises(ConfigError, match=r"decorate it with @pipeline.function"):
        p.step("t", lambda x: x, inputs={})


def test_async_function_gets_an_async_infer() -> None:
    """An ``async def`` step is served through an async infer (it runs on the event loop)."""
    import asyncio
    import inspect

    @dagserve.function(inputs={"x": ("FP32", [1])}, outputs={"y": ("FP32", [1])})
    async def f(x):
        return x + 1

    assert inspect.iscoroutinefunction(f.infer)
    assert asyncio.run(f.infer({"x": np.zeros(1, np.float32)}))["y"].tolist() == [1.0]


def test_numpy_2_5_ndarray_alias_annotations_give_datatypes() -> None:
    """numpy 2.5 makes ``NDArray`` a type alias (PEP 695): ``NDArray[np.float32]`` then has
    the alias as origin and ``np.float32`` as its one argument (seen on the GPU machine's
    numpy 2.5.2, where the iris example failed to load). numpy 2.5 is not on this machine's
    package index, so the alias is rebuilt here the way numpy defines it."""
    from typing import Any, TypeVar

    from typing_extensions import TypeAliasType

    from dagserve.dsl.functions import _annotated
    from dagserve.types import DataType

    scalar = TypeVar("scalar", bound=np.generic)
    alias = TypeAliasType("NDArray", np.ndarray[Any, np.dtype[scalar]], type_params=(scalar,))
    assert _annotated(alias[np.float32]) is DataType.FP32
    assert _annotated(alias[np.int64]) is DataType.INT64
    assert _annotated(alias[np.dtype[np.uint8]]) is DataType.UINT8
    assert _annotated(alias[Any]) is None
