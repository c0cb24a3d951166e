"""Tensor references of a pipeline spec: where a step input or a pipeline output reads from.

A :class:`TensorRef` names a pipeline input or an output of a step, a :class:`FirstOf` the
first of several that exists; :func:`parse_source` reads their YAML/DSL spelling. Both the
spec (:mod:`.spec`) and the conditions (:mod:`.conditions`) use them, so they live below both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["FirstOf", "Source", "TensorRef", "parse_source", "source_refs"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorRef:
    """Where a tensor comes from: pipeline input ``name`` (``step`` is None) or output
    ``name`` of step ``step``. Prints as ``RAW`` or ``pre.FEATURES``, the YAML spelling."""

    step: str | None = None
    name: str

    def __str__(self) -> str:
        return self.name if self.step is None else f"{self.step}.{self.name}"

    def __repr__(self) -> str:
        return f"TensorRef({str(self)!r})"


@dataclass(frozen=True, kw_only=True, slots=True)
class FirstOf:
    """The first of ``refs`` that exists in this request (the join after a switch)."""

    refs: tuple[TensorRef, ...]

    def __str__(self) -> str:
        return "first of " + ", ".join(str(r) for r in self.refs)

    def __repr__(self) -> str:
        return f"FirstOf({[str(r) for r in self.refs]!r})"


Source = TensorRef | FirstOf
"""What a step input or a pipeline output reads."""


def parse_source(value: Any, *, inputs: Iterable[str]) -> Source:
    """Read a YAML/DSL source: ``"RAW"`` (a pipeline input), ``"pre.FEATURES"`` (a step
    output), a :class:`TensorRef`, or a list of those (:class:`FirstOf`).

    A string that names a declared pipeline input is that input even when it contains a dot
    (ONNX exports name tensors ``input.1``); otherwise the part before the first dot is a step.

    Raises:
        ValueError: not a string, reference or list of them.
    """
    if isinstance(value, (TensorRef, FirstOf)):
        return value
    if isinstance(value, str):
        if value in set(inputs) or "." not in value:
            return TensorRef(name=value)
        step, _, name = value.partition(".")
        return TensorRef(step=step, name=name)
    if isinstance(value, (list, tuple)) and value:
        refs = tuple(parse_source(v, inputs=inputs) for v in value)
        if len(refs) == 1:
            return refs[0]
        flat: list[TensorRef] = []
        for r in refs:
            flat.extend(r.refs if isinstance(r, FirstOf) else (r,))
        return FirstOf(refs=tuple(flat))
    raise ValueError(f"expected a tensor reference like 'INPUT' or 'step.OUTPUT', got {value!r}")


def source_refs(source: Source) -> tuple[TensorRef, ...]:
    """Every reference a source may read."""
    return source.refs if isinstance(source, FirstOf) else (source,)
