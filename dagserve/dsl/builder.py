"""The Python DSL: build a :class:`~dagserve.dsl.spec.PipelineSpec` with plain calls.

Nothing is traced and no object pretends to be a tensor: :meth:`Pipeline.input` and
``step[...]`` return :class:`TensorRef` values (the same references YAML spells
``RAW`` / ``pre.FEATURES``), and :meth:`Pipeline.build` returns the frozen spec::

    p = Pipeline("classify")
    raw = p.input("RAW", "UINT8", [-1])
    pre = p.step("pre", "preprocess", inputs={"INPUT": raw})
    clf = p.step("clf", "classifier", inputs={"FEATURES": pre["FEATURES"]})
    p.output("LABEL", clf["LABEL"], "BYTES", [1])
    spec = p.build()

or, click-style, a decorator that runs the function once and leaves the spec in its place::

    @pipeline()
    def classify(p: Pipeline) -> None:
        ...

Conditions use the YAML grammar (``when="params.mode == 'fast'"``); a switch is a pair of
context managers that put a condition on every step declared inside them::

    with p.switch("det.KIND") as route:
        with route.case("cat"):
            p.step("cat", "cat_head", inputs={"X": "det.EMB"})
        with route.default():
            p.step("other", "other_head", inputs={"X": "det.EMB"})

Serve the result with ``await server.add_pipeline(spec)``, or from a ``pipeline.py`` next to a
``config.yaml`` saying ``backend: pipeline`` and ``pipeline_file: pipeline.py``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..types import DataType, TensorSpec
from .conditions import Condition, Op, Param, parse_condition
from .functions import Function, TensorDecl, function
from .spec import (
    STACK,
    STEP_NAME,
    GatherSpec,
    LoopSpec,
    OutputSpec,
    PipelineSpec,
    Source,
    StepSpec,
    TensorRef,
    parse_source,
)

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Pipeline", "StepRef", "Switch", "loop", "pipeline"]

SourceLike = str | TensorRef | Sequence[str | TensorRef]


@dataclass(frozen=True, slots=True)
class StepRef:
    """A declared step; ``step["OUT"]`` is the reference to its output ``OUT``."""

    name: str

    def __getitem__(self, output: str) -> TensorRef:
        return TensorRef(step=self.name, name=output)


def loop(
    max_iterations: int, *, carry: Mapping[str, str] | None = None, until: str | Condition | None = None
) -> LoopSpec:
    """A :class:`LoopSpec`: ``carry`` maps each fed-back input to the output it takes after
    each call; ``until`` is a condition on the step's own outputs, e.g. ``"refine.DONE == 1"``.

    Raises:
        ValueError: ``until`` does not follow the condition grammar.
    """
    return LoopSpec(
        max_iterations=max_iterations,
        carry=dict(carry or {}),
        until=None if until is None else parse_condition(until),
    )


class Pipeline:
    """A pipeline being declared; :meth:`build` freezes it into a :class:`PipelineSpec`."""

    def __init__(self, name: str = "", *, max_batch_size: int = 0, max_inflight_requests: int = 0) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_inflight_requests = max_inflight_requests
        self._inputs: list[TensorSpec] = []
        self._steps: list[tuple[dict[str, Any], dict[str, SourceLike], str | Condition | None]] = []
        self._outputs: list[tuple[dict[str, Any], SourceLike]] = []
        self._one_of: list[tuple[str, ...]] = []
        self._scope: Condition | None = None
        self._origin = _caller()  # errors about the pipeline as a whole point here

    def input(
        self, name: str, datatype: DataType | str, shape: Sequence[int], *, optional: bool = False
    ) -> TensorRef:
        """Declare a pipeline input (``shape`` without the batch dimension when the pipeline
        batches); returns the reference steps read it by."""
        dtype = datatype if isinstance(datatype, DataType) else DataType.parse(datatype)
        self._inputs.append(TensorSpec(name=name, datatype=dtype, shape=tuple(shape), optional=optional))
        return TensorRef(name=name)

    def function(
        self,
        *,
        inputs: Mapping[str, TensorDecl],
        outputs: Mapping[str, TensorDecl],
        max_batch_size: int = 0,
        max_queue_delay_microseconds: int = 0,
        instance_count: int = 1,
        execution: str = "thread",
    ) -> Callable[[Callable[..., Any]], Function]:
        """Declare a Python function as a step function: :func:`dagserve.function`
        (see :mod:`.functions`), here for the pipeline file's convenience; use the result as
        ``step(name, fn, inputs=...)``."""
        return function(
            inputs=inputs, outputs=outputs, max_batch_size=max_batch_size,
            max_queue_delay_microseconds=max_queue_delay_microseconds, instance_count=instance_count,
            execution=execution,
        )

    def step(
        self,
        name: str,
        model: str | Function,
        *,
        inputs: Mapping[str, SourceLike],
        version: int = -1,
        when: str | Condition | None = None,
        map_over: Sequence[str] = (),
        gather: str | GatherSpec | None = None,
        loop: LoopSpec | None = None,
    ) -> StepRef:
        """Declare a step calling ``model`` (a model or another pipeline), or a
        :class:`Function` (served as model ``<pipeline>.<name>``).

        ``inputs`` maps each model input to a reference (or ``"step.OUTPUT"`` / input name;
        a list reads the first that exists). See :class:`StepSpec` for ``when``, ``map_over``
        and ``loop``; ``gather`` (``"stack"``, ``"concat"``, or a :class:`GatherSpec`, e.g.
        ``GatherSpec(mode="pad", value=0)``) joins the items of a mapped step.

        Raises:
            ConfigError: ``when`` given inside a switch case; ``gather`` on a step that does not
                map, or a gather mode that does not exist.
        """
        if when is not None and self._scope is not None:
            raise ConfigError(f"{_caller()}: step '{name}': a step inside a switch case cannot have its own 'when'")
        if not isinstance(model, (str, Function)):
            hint = " (decorate it with @pipeline.function(...))" if callable(model) else ""
            raise ConfigError(f"{_caller()}: step '{name}': model must be a model name or a step function, "
                              f"not {type(model).__name__}{hint}")
        is_function = isinstance(model, Function)
        if is_function and version != -1:
            raise ConfigError(f"{_caller()}: step '{name}': a function step has no versions to pick")
        joined = STACK
        if gather is not None:
            if not map_over:
                raise ConfigError(f"{_caller()}: step '{name}': gather is for a step that maps (map_over)")
            try:
                joined = gather if isinstance(gather, GatherSpec) else GatherSpec(mode=gather)
            except ValueError as exc:
                raise ConfigError(f"{_caller()}: step '{name}': {exc}") from None
        fields = {
            "name": name,
            "model": name if is_function else model,
            "function": model if is_function else None,
            "model_version": version,
            "map_over": tuple(map_over),
            "gather": joined,
            "loop": loop,
            "origin": _caller(),
        }
        self._steps.append((fields, dict(inputs), when if when is not None else self._scope))
        return StepRef(name)

    def output(
        self,
        name: str,
        source: SourceLike,
        datatype: DataType | str | None = None,
        shape: Sequence[int] | None = None,
        *,
        optional: bool = False,
    ) -> None:
        """Declare pipeline output ``name``, read from ``source``; without ``datatype`` and
        ``shape`` its type is taken from the producing step when the pipeline loads."""
        dtype = datatype if datatype is None or isinstance(datatype, DataType) else DataType.parse(datatype)
        fields = {
            "name": name,
            "datatype": dtype,
            "shape": None if shape is None else tuple(shape),
            "optional": optional,
            "origin": _caller(),
        }
        self._outputs.append((fields, source))

    def one_of(self, *names: str | TensorRef) -> None:
        """Require each request to give exactly one of the optional inputs ``names`` (e.g.
        image bytes or an image URL); checked before any step runs, a request giving none or
        several is refused (400 / INVALID_ARGUMENT) with the inputs named."""
        self._one_of.append(tuple(n.name if isinstance(n, TensorRef) else n for n in names))

    def switch(self, on: str | TensorRef | Param) -> Switch:
        """Route on a tensor or request parameter (``"params.kind"``); see the module doc."""
        return Switch(self, on)

    def build(self) -> PipelineSpec:
        """The frozen spec of what was declared so far.

        Raises:
            ConfigError: a step name is invalid or declared twice, or a reference cannot be read.
        """
        names = tuple(t.name for t in self._inputs)
        seen: set[str] = set()
        steps = []
        for fields, inputs, when in self._steps:
            name = fields["name"]
            if not STEP_NAME.match(name) or name == "params":
                raise ConfigError(
                    f"{fields['origin']}: step name {name!r} must be a letter or _ then letters, digits, _ or -"
                )
            if name in seen:
                raise ConfigError(f"{fields['origin']}: step '{name}' is declared twice")
            seen.add(name)
            try:
                wired = {k: _source(v, names) for k, v in inputs.items()}
                condition = None if when is None else parse_condition(when, inputs=names)
            except ValueError as exc:
                raise ConfigError(f"{fields['origin']}: step '{name}': {exc}") from None
            steps.append(StepSpec(inputs=wired, when=condition, **fields))
        outputs = []
        for fields, source in self._outputs:
            try:
                outputs.append(OutputSpec(source=_source(source, names), **fields))
            except ValueError as exc:
                raise ConfigError(f"{fields['origin']}: output '{fields['name']}': {exc}") from None
        return PipelineSpec(
            name=self.name,
            inputs=tuple(self._inputs),
            outputs=tuple(outputs),
            steps=tuple(steps),
            max_batch_size=self.max_batch_size,
            max_inflight_requests=self.max_inflight_requests,
            one_of=tuple(self._one_of),
            origin=self._origin,
        )


class Switch:
    """Conditions for the steps declared inside :meth:`case` / :meth:`default` blocks."""

    def __init__(self, pipeline: Pipeline, on: str | TensorRef | Param) -> None:
        self._pipeline = pipeline
        if isinstance(on, (TensorRef, Param)):
            self._subject: TensorRef | Param = on
        else:
            self._subject = parse_condition(on, inputs=tuple(t.name for t in pipeline._inputs)).subject
        self._cases: list[Any] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    @contextlib.contextmanager
    def case(self, value: Any) -> Iterator[None]:
        """Steps declared inside run only when the subject equals ``value``."""
        self._cases.append(value)
        with self._scoped(Condition(subject=self._subject, op=Op.EQ, value=value)):
            yield

    @contextlib.contextmanager
    def default(self) -> Iterator[None]:
        """Steps declared inside run only when no case declared before matches."""
        with self._scoped(Condition(subject=self._subject, op=Op.NOT_IN, value=tuple(self._cases))):
            yield

    @contextlib.contextmanager
    def _scoped(self, condition: Condition) -> Iterator[None]:
        if self._pipeline._scope is not None:
            raise ConfigError(f"{_caller()}: switch cases cannot be nested")
        self._pipeline._scope = condition
        try:
            yield
        finally:
            self._pipeline._scope = None


def pipeline(
    name: str | None = None, *, max_batch_size: int = 0, max_inflight_requests: int = 0
) -> Callable[[Callable[[Pipeline], None]], PipelineSpec]:
    """Decorate a function that declares a pipeline on the :class:`Pipeline` it is given; the
    decorated name becomes the built :class:`PipelineSpec` (named after the function)."""

    def build(declare: Callable[[Pipeline], None]) -> PipelineSpec:
        p = Pipeline(
            name or declare.__name__,
            max_batch_size=max_batch_size,
            max_inflight_requests=max_inflight_requests,
        )
        declare(p)
        return p.build()

    return build


def _source(value: SourceLike, inputs: tuple[str, ...]) -> Source:
    return parse_source(value, inputs=inputs)


def _caller() -> str:
    """``file:line`` of the user code calling into the builder, for error messages."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename in (__file__, contextlib.__file__):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
