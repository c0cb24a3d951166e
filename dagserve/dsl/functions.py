"""Pipeline steps written as plain Python functions.

A step that only reshapes, scales or labels tensors does not need a model directory: declare
the function's tensors with :func:`function` and use it as a step::

    @dagserve.function(inputs={"features": ("FP32", [4])}, outputs={"scaled": ("FP32", [4])},
                       max_batch_size=64)
    def standardize(features):
        return (features - MEAN) / STD

    pipeline.step("standardize", standardize, inputs={"features": raw})   # Python DSL
    # YAML:  - {name: standardize, function: "steps:standardize", inputs: {features: FEATURES}}

The pipeline serves each such step as a model of its own, named ``<pipeline>.<step>``, with
the config the declaration makes (:meth:`Function.config`): its own dynamic batcher, its
statistics and metrics, and the engine's checks of its inputs and outputs against the declared
types, like any Python model. The function sees the whole batch (the first dimension) when
``max_batch_size`` > 0.

Each input is passed as the keyword argument of its name. What the function returns is matched
to the declared outputs: one array for one output, a tuple in declared order, or a dict by
name; lists and scalars are converted to the declared datatype, arrays are checked, never cast.

Datatypes can come from annotations: a parameter annotated ``numpy.typing.NDArray[np.float32]``
(or the return, or a ``tuple[...]`` of them) needs only its shape declared
(``inputs={"features": [4]}``); a declaration that contradicts its annotation is an error.
Every declaration error names the function's file and line.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelExecutionError
from ..types import DataType, TensorSpec

if typing.TYPE_CHECKING:
    from ..repository.config import ModelConfig

__all__ = ["Function", "TensorDecl", "function"]

TensorDecl = tuple[DataType | str | type, Sequence[int]] | Sequence[int]
"""How one tensor is declared: ``(datatype, shape)``, or just the shape when an annotation
gives the datatype. ``shape`` leaves out the batch dimension when ``max_batch_size`` > 0."""

EXECUTIONS = ("thread", "inline", "auto")


class Function:
    """A Python function declared as a pipeline step (made by :func:`function`).

    Calling it calls the function itself (so it can be tested as plain code). ``inputs`` and
    ``outputs`` are its tensors, in declared order; ``origin`` is ``file:line`` of its declaration (the first decorator).
    """

    __slots__ = (
        "execution", "func", "infer", "inputs", "instance_count", "max_batch_size",
        "max_queue_delay_microseconds", "name", "origin", "outputs",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        max_batch_size: int,
        max_queue_delay_microseconds: int,
        instance_count: int,
        execution: str,
        origin: str,
    ) -> None:
        self.func = func
        self.name = getattr(func, "__qualname__", repr(func))
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self.max_queue_delay_microseconds = max_queue_delay_microseconds
        self.instance_count = instance_count
        self.execution = execution
        self.origin = origin
        self.infer: Callable[[dict[str, Any]], Any]
        """``infer(inputs)`` over a dict of arrays, as a native Python model's (async when
        the function is); the engine serves the step through it."""
        if inspect.iscoroutinefunction(func):

            async def infer_async(inputs: dict[str, Any]) -> dict[str, Any]:
                return self._outputs(await func(**inputs))

            self.infer = infer_async
        else:
            self.infer = lambda inputs: self._outputs(func(**inputs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}: {t.datatype.value} {list(t.shape)}" for t in self.inputs)
        outs = ", ".join(f"{t.name}: {t.datatype.value} {list(t.shape)}" for t in self.outputs)
        return f"Function({self.name} ({ins}) -> ({outs}), max_batch_size={self.max_batch_size}, at {self.origin})"

    def config(self, model: str) -> ModelConfig:
        """The config of the model that serves this function as ``model``: the python
        backend, the declared tensors, a dynamic batcher when ``max_batch_size`` > 0, and
        ``instance_count`` instances running it by ``execution``."""
        from ..repository.config import ModelConfig

        data: dict[str, Any] = {
            "name": model,
            "backend": "python",
            "max_batch_size": self.max_batch_size,
            "input": [{"name": t.name, "data_type": t.datatype, "dims": t.shape} for t in self.inputs],
            "output": [{"name": t.name, "data_type": t.datatype, "dims": t.shape} for t in self.outputs],
            "instance_group": [{"count": self.instance_count, "kind": "KIND_CPU"}],
            "parameters": {"execution": self.execution},
        }
        if self.max_batch_size > 0:
            data["dynamic_batching"] = {"max_queue_delay_microseconds": self.max_queue_delay_microseconds}
        return ModelConfig.model_validate(data)

    def _outputs(self, result: Any) -> dict[str, Any]:
        """The declared outputs from what the function returned.

        Raises:
            ModelExecutionError: the result does not fit the declared outputs.
        """
        names = [t.name for t in self.outputs]
        if isinstance(result, Mapping):
            values = dict(result)
        elif len(names) == 1 and not isinstance(result, tuple):
            values = {names[0]: result}
        elif isinstance(result, tuple) and len(result) == len(names):
            values = dict(zip(names, result, strict=True))
        else:
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"a {type(result).__name__}"
            raise ModelExecutionError(
                f"function {self.name} ({self.origin}) returned {got}; it declares {len(names)} outputs "
                f"({', '.join(names)}): return them as a tuple in that order or as a dict by name"
            )
        for spec in self.outputs:
            value = values.get(spec.name)
            if value is not None and not isinstance(value, np.ndarray) and not hasattr(value, "__dlpack__"):
                try:
                    values[spec.name] = np.asarray(value, dtype=spec.datatype.numpy_dtype)
                except (TypeError, ValueError) as exc:
                    raise ModelExecutionError(
                        f"function {self.name} ({self.origin}): output '{spec.name}' "
                        f"({type(value).__name__}) is not convertible to {spec.datatype.value}: {exc}"
                    ) from None
        return values


def function(
    *,
    inputs: Mapping[str, TensorDecl],
    outputs: Mapping[str, TensorDecl],
    max_batch_size: int = 0,
    max_queue_delay_microseconds: int = 0,
    instance_count: int = 1,
    execution: str = "thread",
) -> Callable[[Callable[..., Any]], Function]:
    """Declare a function as a pipeline step (see the module doc).

    ``inputs`` and ``outputs`` map each tensor name to ``(datatype, shape)`` or, when the
    function's annotations give the datatype, to its shape; every input must be a parameter
    of the function. ``max_batch_size`` > 0 makes the first dimension the batch and gives the
    step a dynamic batcher that waits up to ``max_queue_delay_microseconds`` for a fuller
    batch. ``execution`` is a Python model's: ``thread`` (default: the function runs on the
    worker thread of one of ``instance_count`` instances) or ``inline`` (on the event loop:
    only for short code that never blocks); an ``async def`` runs on the loop.

    Raises:
        ConfigError: a declaration that does not fit the function, naming its file and line.
    """

    def declare(func: Callable[..., Any]) -> Function:
        if isinstance(func, Function):
            func = func.func
        origin = _origin(func)

        def fail(message: str) -> ConfigError:
            return ConfigError(f"{origin}: function {getattr(func, '__qualname__', func)!r}: {message}")

        if not callable(func):
            raise fail("@function decorates a function")
        if not isinstance(max_batch_size, int) or max_batch_size < 0:
            raise fail(f"max_batch_size must be a whole number >= 0, not {max_batch_size!r}")
        if not isinstance(max_queue_delay_microseconds, int) or max_queue_delay_microseconds < 0:
            raise fail(f"max_queue_delay_microseconds must be a whole number >= 0, not {max_queue_delay_microseconds!r}")
        if not isinstance(instance_count, int) or instance_count < 1:
            raise fail(f"instance_count must be a whole number >= 1, not {instance_count!r}")
        if execution not in EXECUTIONS:
            raise fail(f"execution must be 'thread' or 'inline', not {execution!r}")
        if not outputs:
            raise fail("declare at least one output")
        hints = _hints(func)
        signature = inspect.signature(func)
        params = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for name in inputs:
            p = params.get(name)
            if (p is None and not takes_any) or (p is not None and p.kind in (
                    inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)):
                raise fail(f"input '{name}' is not a keyword parameter of the function "
                           f"(parameters: {', '.join(params) or 'none'})")
        for p in params.values():
            if (p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY,
                           inspect.Parameter.POSITIONAL_ONLY)
                    and p.default is inspect.Parameter.empty and p.name not in inputs):
                raise fail(f"parameter '{p.name}' has no default and is not a declared input "
                           f"(inputs: {', '.join(inputs) or 'none'})")
        returned = _returned(hints.get("return"), len(outputs))
        declared_in = tuple(
            _tensor(name, decl, _annotated(hints.get(name)), fail, "input") for name, decl in inputs.items()
        )
        declared_out = tuple(
            _tensor(name, decl, returned[i] if returned else None, fail, "output")
            for i, (name, decl) in enumerate(outputs.items())
        )
        return Function(
            func,
            inputs=declared_in,
            outputs=declared_out,
            max_batch_size=max_batch_size,
            max_queue_delay_microseconds=max_queue_delay_microseconds,
            instance_count=instance_count,
            execution=execution,
            origin=origin,
        )

    return declare


def _origin(func: Callable[..., Any]) -> str:
    """``file:line`` of the function's ``def`` (of the decorator's caller for other callables)."""
    code = getattr(inspect.unwrap(func), "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    frame = sys._getframe(2)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    """The function's annotations resolved (``from __future__ import annotations`` too); the
    ones that cannot be resolved are left out."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - an unresolvable annotation only means no hint
        return {}


def _annotated(hint: Any) -> DataType | None:
    """The datatype an ``NDArray[np.float32]``-style annotation names, or None."""
    if hint is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is np.ndarray and len(args) == 2:
        dtype = args[1]  # ndarray[shape, dtype[scalar]]: NDArray[scalar] up to numpy 2.4
    elif getattr(origin, "__name__", "") == "NDArray" and len(args) == 1:
        dtype = args[0]  # numpy 2.5: NDArray is a type alias; NDArray[scalar] keeps its argument
    else:
        return None
    if typing.get_origin(dtype) is np.dtype:
        (dtype,) = typing.get_args(dtype) or (None,)
    scalar = dtype
    if not isinstance(scalar, type) or not issubclass(scalar, np.generic):
        return None
    try:
        return DataType.from_numpy(np.dtype(scalar))
    except (TypeError, ValueError):
        return None


def _returned(hint: Any, count: int) -> tuple[DataType | None, ...] | None:
    """The output datatypes a return annotation names (one array, or a tuple of them)."""
    if hint is None:
        return None
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == count:
            return tuple(_annotated(a) for a in args)
        return None
    return (_annotated(hint),) if count == 1 else None


def _tensor(
    name: str, decl: Any, annotated: DataType | None, fail: Callable[[str], ConfigError], kind: str
) -> TensorSpec:
    what = f"{kind} '{name}'"
    shape: Any
    datatype: DataType | None
    if isinstance(decl, tuple) and len(decl) == 2 and not isinstance(decl[0], int):
        raw_type, shape = decl
        try:
            if isinstance(raw_type, DataType):
                datatype = raw_type
            elif isinstance(raw_type, str):
                datatype = DataType.parse(raw_type)
            else:
                datatype = DataType.from_numpy(np.dtype(raw_type))
        except (TypeError, ValueError) as exc:
            raise fail(f"{what}: {raw_type!r} is not a datatype ({exc})") from None
        if annotated is not None and annotated is not datatype:
            raise fail(f"{what} is declared {datatype.value} but annotated {annotated.value}")
    elif isinstance(decl, (list, tuple)):
        shape, datatype = decl, annotated
        if datatype is None:
            raise fail(f"{what}: give its datatype, as ({kind}s={{'{name}': ('FP32', {list(decl)})}}) "
                       "or with an annotation such as numpy.typing.NDArray[np.float32]")
    else:
        raise fail(f"{what}: declare it as (datatype, shape), e.g. ('FP32', [4]), not {decl!r}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise fail(f"{what}: the shape must be a list of whole numbers, not {shape!r}")
    if any(d < -1 or d == 0 for d in shape):
        raise fail(f"{what}: shape {list(shape)} has an invalid dimension (use a positive size or -1 for any size)")
    return TensorSpec(name=name, datatype=datatype, shape=tuple(shape))


def resolve(reference: str, model_dir: Path) -> Function:
    """The :class:`Function` that a YAML ``function: module:name`` names: ``module`` is a
    Python file beside the pipeline's config (``steps`` -> ``steps.py``, ``lib.steps`` ->
    ``lib/steps.py``), imported by the one importer of user code.

    Raises:
        ConfigError / ValueError: a malformed reference (ValueError: the caller adds the
            field), a missing module, a failed import, or a name that is not a declared function.
    """
    module_name, sep, attr = reference.partition(":")
    parts = module_name.split(".")
    if not sep or not attr.isidentifier() or not all(p.isidentifier() for p in parts):
        raise ValueError(f"{reference!r} is not 'module:function' (e.g. 'steps:standardize')")
    relative = Path(*parts)
    candidates = [model_dir / relative.with_suffix(".py"), model_dir / relative / "__init__.py"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise ValueError(f"module '{module_name}' not found: expected {candidates[0]}")
    module = _import_module(path)
    found = getattr(module, attr, None)
    if isinstance(found, Function):
        return found
    if found is None:
        raise ValueError(f"module '{module_name}' ({path}) defines no '{attr}'")
    raise ValueError(
        f"'{reference}' is a {type(found).__name__}, not a declared step function: decorate it with "
        "@dagserve.function(inputs=..., outputs=...) to declare its tensors"
    )


def _import_module(path: Path) -> object:
    from ..backends._imports import import_file
    from .from_python import _line_in

    try:
        return import_file(path, f"function_{path.stem}")
    except ConfigError:
        raise
    except Exception as exc:  # user code may raise anything while importing
        raise ConfigError(f"{path}{_line_in(exc, path)}: failed to import: {type(exc).__name__}: {exc}") from exc
