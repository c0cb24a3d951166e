"""The one frozen graph spec that every pipeline form compiles to.

A Triton ensemble (``config.pbtxt``), a native YAML pipeline (``config.yaml``) and a pipeline
built with the Python DSL all become a :class:`PipelineSpec`; validation, planning and execution
only ever see this form, so the three are interchangeable and a test holds them equal.

The spec names where every tensor comes from, never what it is called in between: a step input
reads a :class:`TensorRef` (a pipeline input, or an output of another step), so two spellings of
the same graph (Triton's ensemble tensor names vs YAML's ``step.OUTPUT``) compile to equal specs.

Every object here is immutable and hashable. ``origin`` fields (the file and line a thing was
declared at, for error messages) take no part in equality.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from ..types import DataType, TensorSpec
from .conditions import Condition
from .refs import FirstOf, Source, TensorRef, parse_source, source_refs

if TYPE_CHECKING:
    from .functions import Function

__all__ = [
    "FirstOf",
    "FrozenMap",
    "GatherSpec",
    "LoopSpec",
    "OutputSpec",
    "PipelineSpec",
    "Source",
    "StepSpec",
    "TensorRef",
    "function_model",
    "parse_source",
]

K = TypeVar("K")
V = TypeVar("V")

STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
"""Step names may not contain dots: ``a.b`` always reads as output ``b`` of step ``a``."""


def function_model(pipeline: str, step: str) -> str:
    """The name of the model serving a function step: ``<pipeline>.<step>`` (just the step's
    name while the pipeline has none yet, e.g. in a ``pipeline.py`` before it loads)."""
    return f"{pipeline}.{step}" if pipeline else step


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping that keeps insertion order and prints like a dict.

    Equality ignores order (as dict equality does), so ``{a, b}`` read from YAML equals
    ``{b, a}`` read from a protobuf map.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopSpec:
    """Call a step's model repeatedly: after each call, each ``carry`` input takes the value
    of its paired output; stop after ``max_iterations`` calls or as soon as ``until`` holds
    (a condition on the step's own outputs). The step's outputs are those of the last call."""

    max_iterations: int
    carry: Mapping[str, str] = field(default_factory=FrozenMap)
    until: Condition | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.carry, FrozenMap):
            object.__setattr__(self, "carry", FrozenMap(self.carry))


GATHER_MODES = ("stack", "concat", "pad")
DEFAULT_COUNTS = "COUNTS"


@dataclass(frozen=True, kw_only=True, slots=True)
class GatherSpec:
    """How a mapped step joins its items' outputs into one tensor per output.

    * ``stack`` (the default): along a new first dimension; every item must answer the same
      shape.
    * ``concat``: along the items' own first dimension (3 crops from one item and 7 from the
      next give 10 rows), and a second output ``counts`` (INT64 ``[items]``: the rows each item
      gave, default name ``COUNTS``) that later steps read as ``step.COUNTS``. Every
      concatenated output of one item must have the same number of rows.
    * ``pad``: stacked after padding every item to the largest size in each dimension with
      ``value``; ``counts``, when named, gives each item's own first-dimension size.

    Raises:
        ValueError: an unknown mode, ``pad`` without a value, or a field the mode does not take.
    """

    mode: str = "stack"
    counts: str = ""
    value: str | bytes | int | float | bool | None = None

    def __post_init__(self) -> None:
        if self.mode not in GATHER_MODES:
            raise ValueError(f"gather mode must be one of {', '.join(GATHER_MODES)}, not {self.mode!r}")
        if self.mode == "pad" and self.value is None:
            raise ValueError("gather 'pad' needs the value to pad with, e.g. {mode: pad, value: 0}")
        if self.mode != "pad" and self.value is not None:
            raise ValueError(f"gather '{self.mode}' takes no value (only 'pad' does)")
        if self.mode == "stack" and self.counts:
            raise ValueError("gather 'stack' has no counts output (use 'concat' or 'pad')")
        if self.mode == "concat" and not self.counts:
            object.__setattr__(self, "counts", DEFAULT_COUNTS)

    def __str__(self) -> str:
        parts = [self.mode]
        if self.value is not None:
            parts.append(f"value {self.value!r}")
        if self.counts:
            parts.append(f"counts {self.counts}")
        return " ".join(parts) if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"


STACK = GatherSpec()


@dataclass(frozen=True, kw_only=True, slots=True)
class StepSpec:
    """One call of a model (or of another pipeline) inside a pipeline.

    ``inputs`` maps each input of the member model to where it is read from. The step runs
    as soon as they all exist. It is skipped (its outputs do not exist) when ``when`` does not
    hold or a required input does not exist. ``map_over`` names inputs to fan out over: the
    model is called once per element of their first dimension (concurrently, so the calls
    batch at the model) and the outputs are gathered as ``gather`` says (stacked along a new
    first dimension by default). ``model_version`` -1 means the newest ready version.
    batch at the model) and the outputs are gathered along a new first dimension.
    ``model_version`` -1 means the newest ready version.

    A step with a ``function`` (:mod:`.functions`) calls that Python function, served by the
    pipeline as model ``<pipeline>.<step>`` (:class:`PipelineSpec` sets ``model`` so).
    """

    name: str
    model: str
    model_version: int = -1
    inputs: Mapping[str, Source] = field(default_factory=FrozenMap)
    when: Condition | None = None
    map_over: tuple[str, ...] = ()
    gather: GatherSpec = STACK
    loop: LoopSpec | None = None
    function: Function | None = None
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, FrozenMap):
            object.__setattr__(self, "inputs", FrozenMap(self.inputs))
        object.__setattr__(self, "map_over", tuple(self.map_over))

    def refs(self) -> Iterator[TensorRef]:
        """Every tensor this step reads, its condition's subject included."""
        for source in self.inputs.values():
            yield from source_refs(source)
        if self.when is not None and isinstance(self.when.subject, TensorRef):
            yield self.when.subject

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}", f"model={self.model!r}"]
        if self.model_version != -1:
            parts.append(f"model_version={self.model_version}")
        parts.append(f"inputs={ {k: str(v) for k, v in self.inputs.items()}!r}")
        if self.when is not None:
            parts.append(f"when={str(self.when)!r}")
        if self.map_over:
            parts.append(f"map_over={self.map_over!r}")
        if self.gather != STACK:
            parts.append(f"gather={str(self.gather)!r}")
        if self.loop is not None:
            parts.append(f"loop={self.loop!r}")
        if self.function is not None:
            parts.append(f"function={self.function.name!r}")
        return f"StepSpec({', '.join(parts)})"


@dataclass(frozen=True, kw_only=True, slots=True)
class OutputSpec:
    """A pipeline output: where it comes from and, optionally, its declared type.

    ``datatype``/``shape`` None are inferred from the producing step at load time. An
    ``optional`` output may be missing from a response (its producer was skipped). ``origin``
    is where it was declared (``file:line``), for error messages.
    """

    name: str
    source: Source
    datatype: DataType | None = None
    shape: tuple[int, ...] | None = None
    optional: bool = False
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))

    def __repr__(self) -> str:
        typed = f", {self.datatype.value} {list(self.shape or ())}" if self.datatype else ""
        optional = ", optional" if self.optional else ""
        return f"OutputSpec({self.name!r} <- {str(self.source)!r}{typed}{optional})"


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineSpec:
    """A whole pipeline: typed inputs, steps, and outputs read from step outputs.

    ``max_batch_size`` has Triton's meaning for the pipeline's own inputs and outputs (0: no
    batch dimension). ``max_inflight_requests`` (0: unlimited) bounds how many calls of each
    step run at once across all requests, Triton's ensemble back-pressure. ``origin`` is the
    file the pipeline came from, for error messages.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]
    steps: tuple[StepSpec, ...]
    max_batch_size: int = 0
    max_inflight_requests: int = 0
    one_of: tuple[tuple[str, ...], ...] = ()
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("inputs", "outputs", "steps"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "one_of", tuple(tuple(group) for group in self.one_of))
        if any(s.function is not None for s in self.steps):  # their models take the pipeline's name
            object.__setattr__(self, "steps", tuple(
                replace(s, model=function_model(self.name, s.name)) if s.function is not None else s
                for s in self.steps
            ))

    def step(self, name: str) -> StepSpec:
        """The step called ``name``.

        Raises:
            KeyError: no such step.
        """
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def __repr__(self) -> str:
        lines = [f"PipelineSpec(name={self.name!r}, max_batch_size={self.max_batch_size},"]
        lines.append(
            "  inputs=" + repr([f"{t.name}: {t.datatype.value} {list(t.shape)}" for t in self.inputs]) + ","
        )
        lines.append("  steps=(")
        lines.extend(f"    {s!r}," for s in self.steps)
        lines.append("  ),")
        if self.one_of:
            lines.append(f"  one_of={[list(g) for g in self.one_of]!r},")
        lines.append(f"  outputs={list(self.outputs)!r})")
        return "\n".join(lines)
