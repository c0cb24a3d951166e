"""Conditions that decide at run time whether a pipeline step runs (``when``) or a loop stops
(``until``).

One small grammar, the same in YAML and in the Python DSL::

    params.mode == 'fast'        a request parameter compared to a literal
    det.COUNT > 0                a tensor (step output or pipeline input) compared to a literal
    route.KIND in ['a', 'b']     membership
    det.FOUND                    truthiness

Literals are Python literals (read with :func:`ast.literal_eval`, never evaluated as code).

A tensor condition holds when the tensor is non-empty and the comparison holds for *every*
element (``np.all``); a missing tensor or parameter makes ``==``, ``<``, ``in`` and truthiness
false and ``!=`` / ``not in`` true. BYTES tensors compare as ``bytes`` (a ``str`` literal is
encoded as UTF-8).
"""

from __future__ import annotations

import ast
import enum
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .refs import TensorRef, parse_source

__all__ = ["Condition", "Op", "Param", "holds", "parse_condition"]


class Op(enum.Enum):
    """A comparison; ``value`` is how it is written."""

    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_IN = "not in"
    TRUTHY = "truthy"


@dataclass(frozen=True, kw_only=True, slots=True)
class Param:
    """A request parameter, written ``params.NAME``."""

    name: str

    def __str__(self) -> str:
        return f"params.{self.name}"


Scalar = str | bytes | int | float | bool


@dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    """``subject op value``; ``value`` is a tuple for ``in`` / ``not in`` and None for truthiness."""

    subject: TensorRef | Param
    op: Op = Op.TRUTHY
    value: Scalar | tuple[Scalar, ...] | None = None

    def __post_init__(self) -> None:
        if self.op in (Op.IN, Op.NOT_IN):
            if not isinstance(self.value, tuple):
                object.__setattr__(self, "value", tuple(self.value))  # type: ignore[arg-type]
        elif isinstance(self.value, (list, tuple)):
            raise ValueError(f"operator '{self.op.value}' compares with one value, not a list")

    def __str__(self) -> str:
        if self.op is Op.TRUTHY:
            return str(self.subject)
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.subject} {self.op.value} {value!r}"

    def __repr__(self) -> str:
        return f"Condition({str(self)!r})"


_GRAMMAR = re.compile(
    r"^\s*(?P<subject>[^\s=!<>]+)\s*"
    r"(?:(?P<op>==|!=|<=|>=|<|>|not\s+in\b|in\b)\s*(?P<value>.+?))?\s*$"
)


def parse_condition(text: str | Condition, *, inputs: tuple[str, ...] | frozenset[str] = ()) -> Condition:
    """Read a condition written in the grammar above (a :class:`Condition` passes through).

    ``inputs`` are the pipeline's input names, so that a dotted input name is not read as
    ``step.output``.

    Raises:
        ValueError: the text does not follow the grammar; the message shows it.
    """
    if isinstance(text, Condition):
        return text
    match = _GRAMMAR.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f'cannot read condition {text!r} (expected e.g. "params.mode == \'fast\'" or "det.COUNT > 0")'
        )
    subject_text = match["subject"]
    subject: TensorRef | Param
    if subject_text.startswith("params."):
        subject = Param(name=subject_text.removeprefix("params."))
    else:
        parsed = parse_source(subject_text, inputs=inputs)
        assert isinstance(parsed, TensorRef)
        subject = parsed
    if match["op"] is None:
        return Condition(subject=subject)
    op = Op(" ".join(match["op"].split()))
    try:
        value = ast.literal_eval(match["value"])
    except (ValueError, SyntaxError):
        raise ValueError(f"condition {text!r}: {match['value']!r} is not a literal (quote strings)") from None
    if op in (Op.IN, Op.NOT_IN):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(f"condition {text!r}: '{op.value}' needs a list, e.g. ['a', 'b']")
        value = tuple(value)
    elif isinstance(value, (list, tuple, set, dict)):
        raise ValueError(f"condition {text!r}: '{op.value}' compares with one value, not {value!r}")
    return Condition(subject=subject, op=op, value=value)


def holds(condition: Condition, actual: Any) -> bool:
    """Whether ``condition`` holds for ``actual``: the subject's value in this request (a numpy
    array, a parameter value, or None when it does not exist). Never raises."""
    op, value = condition.op, condition.value
    if actual is None:
        return op in (Op.NE, Op.NOT_IN)
    if isinstance(actual, np.ndarray):
        return _array_holds(actual, op, value)
    if op is Op.TRUTHY:
        return bool(actual) and actual not in ("false", "False", "0")
    if op in (Op.IN, Op.NOT_IN):
        assert isinstance(value, tuple)
        found = any(_scalar_equal(actual, v) for v in value)
        return found if op is Op.IN else not found
    if op is Op.EQ:
        return _scalar_equal(actual, value)
    if op is Op.NE:
        return not _scalar_equal(actual, value)
    try:
        left, right = float(actual), float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return _ORDER[op](left, right)


_ORDER = {
    Op.LT: lambda a, b: a < b,
    Op.LE: lambda a, b: a <= b,
    Op.GT: lambda a, b: a > b,
    Op.GE: lambda a, b: a >= b,
}


def _scalar_equal(actual: Any, value: Any) -> bool:
    if actual == value:
        return True
    # Parameters arrive as JSON values or strings: "3" == 3 and "true" == True should hold.
    if isinstance(actual, str) and not isinstance(value, str):
        return actual == _to_text(value)
    return False


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _array_holds(array: np.ndarray, op: Op, value: Any) -> bool:
    if array.size == 0:
        return op in (Op.NE, Op.NOT_IN)
    if array.dtype.kind == "O":
        value = _as_bytes(value)
    with np.errstate(invalid="ignore"):
        try:
            if op is Op.TRUTHY:
                return bool(
                    np.all(array.astype(bool) if array.dtype.kind != "O" else [bool(v) for v in array.flat])
                )
            if op in (Op.IN, Op.NOT_IN):
                found = all(any(x == v for v in value) for x in array.flat)
                return found if op is Op.IN else not any(any(x == v for v in value) for x in array.flat)
            if op is Op.EQ:
                return bool(np.all(array == value))
            if op is Op.NE:
                return bool(np.all(array != value))
            return bool(np.all(_ORDER[op](array, value)))
        except (TypeError, ValueError):
            return False


def _as_bytes(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, tuple):
        return tuple(_as_bytes(v) for v in value)
    return value
