"""Native YAML pipelines -> PipelineSpec.

A pipeline is a model directory whose ``config.yaml`` says ``backend: pipeline``; its typed
``inputs``/``outputs`` are the ordinary config fields, and ``pipeline:`` holds the graph::

    backend: pipeline
    max_batch_size: 0
    inputs:  [{name: RAW, datatype: UINT8, shape: [-1]}]
    outputs: [{name: LABEL, datatype: BYTES, shape: [1]}]
    pipeline:
      steps:
        - name: pre                      # default: the model's name
          model: preprocess
          inputs: {INPUT: RAW}           # model input <- pipeline input, or step.OUTPUT
        - name: clf
          model: classifier
          version: 2                     # default: the newest ready version
          inputs: {FEATURES: pre.FEATURES}
          when: "params.mode != 'skip'"  # run only if this holds (see dsl.conditions)
        - switch: clf.KIND               # route on a tensor or params.NAME
          cases:
            cat: [{name: cat, model: cat_head, inputs: {X: clf.EMB}}]
          default: [{name: other, model: other_head, inputs: {X: clf.EMB}}]
        - name: crops
          model: crop_classifier
          inputs: {CROP: det.CROPS}
          map: [CROP]                    # one call per element of CROPS' first dimension
          gather: concat                 # or stack (default), {mode: pad, value: 0}; see GatherSpec
        - name: scale                    # a Python function as a step, served as model 'p.scale'
          function: steps:scale          # steps.py beside config.yaml, @dagserve.function
          inputs: {x: pre.X}
        - name: refine
          model: denoiser
          inputs: {X: pre.X}
          loop: {max_iterations: 8, carry: {X: Y}, until: "refine.DONE == 1"}
      outputs:
        LABEL: post.LABEL
        HEAD: [cat.OUT, other.OUT]       # the first that exists (after a switch)
      max_inflight_requests: 0           # per-step concurrency bound, 0 = none
      one_of: [[IMAGE, IMAGE_URL]]       # a request gives exactly one of these optional inputs

An output listed under ``pipeline.outputs`` but not in the top-level ``outputs`` gets its type
from the step that produces it. Errors name the file and line, the field and the step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ..errors import ConfigError
from ..repository.config import ModelConfig
from ..repository.locations import describe_validation, did_you_mean, loc_text, locate, yaml_index
from .conditions import Condition, Op, parse_condition
from .functions import Function, resolve
from .spec import STACK, STEP_NAME, GatherSpec, LoopSpec, OutputSpec, PipelineSpec, StepSpec, parse_source

__all__ = ["compile_yaml"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class _Loop(_Strict):
    max_iterations: int = Field(ge=1)
    carry: dict[str, str] = Field(default_factory=dict)
    until: str | None = None


class _Gather(_Strict):
    mode: str
    counts: str = ""
    value: bool | int | float | str | None = None


class _Step(_Strict):
    name: str | None = None
    model: str
    version: int = Field(default=-1, alias="model_version")
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)
    when: str | None = None
    map: str | list[str] = Field(default_factory=list, alias="map_over")
    gather: str | _Gather | None = None
    loop: _Loop | None = None


class _FunctionStep(_Strict):
    """A step calling a Python function (``function: module:name``) rather than a model."""

    name: str | None = None
    function: str
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)
    when: str | None = None
    map: str | list[str] = Field(default_factory=list, alias="map_over")
    gather: str | _Gather | None = None
    loop: _Loop | None = None


def _step_kind(value: Any) -> str:
    return "function" if isinstance(value, dict) and "function" in value else "step"


_AnyStep = Annotated[
    Annotated[_Step, Tag("step")] | Annotated[_FunctionStep, Tag("function")], Discriminator(_step_kind)
]


class _Switch(_Strict):
    switch: str
    cases: dict[str | int | bool, list[_AnyStep]]
    default: list[_AnyStep] = Field(default_factory=list)


def _kind(value: Any) -> str:
    if isinstance(value, dict) and "switch" in value:
        return "switch"
    return _step_kind(value)


class _Pipeline(_Strict):
    steps: list[
        Annotated[
            Annotated[_Step, Tag("step")] | Annotated[_FunctionStep, Tag("function")]
            | Annotated[_Switch, Tag("switch")],
            Discriminator(_kind),
        ]
    ]
    outputs: dict[str, str | list[str]]
    max_inflight_requests: int = Field(default=0, ge=0)
    one_of: list[list[str]] = Field(default_factory=list)


def compile_yaml(config: ModelConfig, *, path: Path | None = None, model_dir: Path | None = None) -> PipelineSpec:
    """The spec of a native YAML pipeline config (``config.pipeline`` holds the graph).

    ``path`` is the config file; it is re-read only to point error messages at lines.
    ``model_dir`` (default: the config file's directory) is where ``function:`` modules are.

    Raises:
        ConfigError: the ``pipeline`` section is malformed;
            ``file:line:column: field 'a.b': message`` (an unknown key with a did-you-mean hint).
    """
    assert config.pipeline is not None
    lines = yaml_index(path.read_text()) if path is not None and path.is_file() else {}
    origin = str(path) if path else f"pipeline '{config.name}'"
    try:
        graph = _Pipeline.model_validate(config.pipeline)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation(exc, path=origin, index=lines, model=_Pipeline, prefix=("pipeline",),
                                tags=("step", "function", "switch"))
        ) from None

    inputs = tuple(t.name for t in config.input)

    def where(*loc: Any) -> str:
        """``file:line`` of a step (its origin, shown before 'pipeline ..., step ...')."""
        return origin + locate(("pipeline", *loc), lines, column=False)

    def fail(loc: tuple[Any, ...], message: str) -> ConfigError:
        at = origin + locate(("pipeline", *loc), lines)
        return ConfigError(f"{at}: field '{loc_text(('pipeline', *loc))}': {message}")

    functions = _Functions(model_dir or (path.parent if path is not None else None))
    steps: list[StepSpec] = []
    for i, entry in enumerate(graph.steps):
        if not isinstance(entry, _Switch):
            steps.append(_step(entry, ("steps", i), None, inputs, where, fail, functions))
            continue
        try:
            subject = parse_condition(entry.switch, inputs=inputs).subject
        except ValueError as exc:
            raise fail(("steps", i, "switch"), str(exc)) from None
        for value, case_steps in entry.cases.items():
            cond = Condition(subject=subject, op=Op.EQ, value=value)
            for j, s in enumerate(case_steps):
                steps.append(_step(s, ("steps", i, "cases", str(value), j), cond, inputs, where, fail, functions))
        default = Condition(subject=subject, op=Op.NOT_IN, value=tuple(entry.cases))
        for j, s in enumerate(entry.default):
            steps.append(_step(s, ("steps", i, "default", j), default, inputs, where, fail, functions))

    declared = {t.name: t for t in config.output}
    for name in declared:
        if name not in graph.outputs:
            raise fail(
                ("outputs",),
                f"output '{name}' is declared but pipeline.outputs does not say which step writes it"
                + did_you_mean(name, [n for n in graph.outputs if n not in declared]),
            )
    outputs = []
    for name, source_text in graph.outputs.items():
        try:
            source = parse_source(source_text, inputs=inputs)
        except ValueError as exc:
            raise fail(("outputs", name), str(exc)) from None
        t = declared.get(name)
        outputs.append(
            OutputSpec(
                name=name,
                source=source,
                datatype=t.data_type if t else None,
                shape=t.dims if t else None,
                optional=t.optional if t else False,
                origin=where("outputs", name),
            )
        )
    # Declared outputs keep their declared order (metadata shows them so); inferred ones follow.
    outputs.sort(key=lambda o: list(declared).index(o.name) if o.name in declared else len(declared))
    return PipelineSpec(
        name=config.name,
        inputs=tuple(t.spec() for t in config.input),
        outputs=tuple(outputs),
        steps=tuple(steps),
        max_batch_size=config.max_batch_size,
        max_inflight_requests=graph.max_inflight_requests,
        one_of=tuple(tuple(group) for group in graph.one_of),
        origin=origin,
    )


def _step(
    entry: _Step | _FunctionStep,
    loc: tuple[Any, ...],
    switch: Condition | None,
    inputs: tuple[str, ...],
    where: Callable[..., str],
    fail: Callable[[tuple[Any, ...], str], ConfigError],
    functions: _Functions,
) -> StepSpec:
    function = None
    if isinstance(entry, _FunctionStep):
        try:
            function = functions.get(entry.function)
        except ValueError as exc:
            raise fail((*loc, "function"), str(exc)) from None
        except ConfigError as exc:  # the module's own file:line (an import failure, a declaration)
            raise ConfigError(f"{where(*loc)}: field '{loc_text(('pipeline', *loc, 'function'))}': {exc}") from None
    default = entry.model if isinstance(entry, _Step) else entry.function.rpartition(":")[2]
    name = entry.name if entry.name is not None else default
    if not STEP_NAME.match(name) or name == "params":
        raise fail(
            (*loc, "name"),
            f"step name {name!r} must be a letter or _ then letters, digits, _ or - (not 'params')",
        )
    wired = {}
    for key, text in entry.inputs.items():
        try:
            wired[key] = parse_source(text, inputs=inputs)
        except ValueError as exc:
            raise fail((*loc, "inputs", key), str(exc)) from None
    when = switch
    if entry.when is not None:
        if switch is not None:
            raise fail((*loc, "when"), "a step inside a switch case cannot have its own 'when'")
        try:
            when = parse_condition(entry.when, inputs=inputs)
        except ValueError as exc:
            raise fail((*loc, "when"), str(exc)) from None
    loop = None
    if entry.loop is not None:
        until = None
        if entry.loop.until is not None:
            try:
                until = parse_condition(entry.loop.until, inputs=inputs)
            except ValueError as exc:
                raise fail((*loc, "loop", "until"), str(exc)) from None
        loop = LoopSpec(max_iterations=entry.loop.max_iterations, carry=entry.loop.carry, until=until)
    map_over = (entry.map,) if isinstance(entry.map, str) else tuple(entry.map)
    gather = STACK
    if entry.gather is not None:
        if not map_over:
            raise fail((*loc, "gather"), "gather is for a step that maps ('map:'); this step does not")
        try:
            gather = (
                GatherSpec(mode=entry.gather) if isinstance(entry.gather, str)
                else GatherSpec(mode=entry.gather.mode, counts=entry.gather.counts, value=entry.gather.value)
            )
        except ValueError as exc:
            raise fail((*loc, "gather"), str(exc)) from None
    return StepSpec(
        name=name,
        model=entry.model if isinstance(entry, _Step) else name,
        function=function,
        model_version=entry.version if isinstance(entry, _Step) else -1,
        inputs=wired,
        when=when,
        map_over=map_over,
        gather=gather,
        loop=loop,
        origin=where(*loc),
    )


class _Functions:
    """The functions ``function:`` fields name, each module imported once per compile."""

    def __init__(self, model_dir: Path | None) -> None:
        self._model_dir = model_dir
        self._found: dict[str, Function] = {}

    def get(self, reference: str) -> Function:
        """Raises ValueError (a bad reference) or ConfigError (the module's own problem)."""
        found = self._found.get(reference)
        if found is None:
            if self._model_dir is None:
                raise ValueError("a function step needs the pipeline's directory (load it from a repository)")
            found = self._found[reference] = resolve(reference, self._model_dir)
        return found
