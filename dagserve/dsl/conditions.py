"""Conditions that decide at run time whether a pipeline step runs (``when``) or a loop stops
(``until``).

One small grammar, the same in YAML and in the Python DSL: one subject, at most one operator,
one literal::

    params.mode == 'fast'        a request parameter compared to a literal
    params.explain == true       booleans are true / false (or True / False)
    det.COUNT > 0                a tensor (step output or pipeline input) compared to a literal
    route.KIND in ['a', 'b']     membership (also: not in)
    det.FOUND                    truthiness

Operators: ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``. Literals are
strings in quotes, numbers, ``true``/``false`` and lists of those (read with
:func:`ast.literal_eval`, never evaluated as code). ``and``, ``or`` and ``not`` are not part
of the grammar; the parse error says so and how to write the same.

A request parameter compares by its JSON (or gRPC) type: a boolean with ``true``/``false``, a
number with a number, a string with a quoted string. A parameter of another type than the
literal is an error of the request (:class:`ConditionTypeError`, a 400 naming the step), never a
silent ``false``: ``"explain": true`` against ``params.explain == 'true'`` is refused, not
skipped. Truthiness (``params.explain`` alone) takes a boolean, a number (non-zero), or the
strings ``"true"``/``"false"``.

A tensor condition holds when the tensor is non-empty and the comparison holds for *every*
element (``np.all``); BYTES tensors compare as ``bytes`` (a ``str`` literal is encoded as
UTF-8). A missing tensor or parameter makes ``==``, ``<``, ``in`` and truthiness false and
``!=`` / ``not in`` true.
"""

from __future__ import annotations

import ast
import enum
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .refs import TensorRef, parse_source

__all__ = ["Condition", "ConditionTypeError", "Op", "Param", "holds", "parse_condition"]


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
        if isinstance(self.value, tuple):
            return f"{self.subject} {self.op.value} [{', '.join(map(_literal, self.value))}]"
        return f"{self.subject} {self.op.value} {_literal(self.value)}"

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
    if isinstance(text, str):
        _check_connectives(text)
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
    value = _read_literal(text, match["value"])
    if op in (Op.IN, Op.NOT_IN):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise ValueError(f"condition {text!r}: '{op.value}' needs a list, e.g. ['a', 'b']")
        value = tuple(value)
    elif isinstance(value, (list, tuple, set, dict)):
        raise ValueError(f"condition {text!r}: '{op.value}' compares with one value, not {value!r}")
    elif op in _ORDER and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"condition {text!r}: '{op.value}' compares numbers, not {_literal(value)}")
    return Condition(subject=subject, op=op, value=value)


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_JSON_WORDS = re.compile(r"\b(true|false)\b")
_CONNECTIVES = re.compile(r"(?:^|\s)(and|or|not(?!\s+in\b))(?=\s|$|\()")


def _check_connectives(text: str) -> None:
    """Name ``and`` / ``or`` / ``not`` (outside quotes) as unsupported, with what to write."""
    found = _CONNECTIVES.search(_STRING.sub("''", text))
    if found is not None:
        raise ValueError(
            f"condition {text!r}: '{found[1]}' is not supported: a condition tests one subject with one "
            "operator. Use 'in [...]' or 'not in [...]' for several values of one subject, '!=' for a "
            "negation, or let an earlier step compute one flag to test"
        )


def _read_literal(text: str, written: str) -> Any:
    """The literal ``written`` (the right-hand side of ``text``); ``true``/``false`` outside
    quotes are booleans."""
    parts, last = [], 0
    for m in _STRING.finditer(written):
        parts.append(_JSON_WORDS.sub(lambda w: w[1].capitalize(), written[last : m.start()]))
        parts.append(m[0])
        last = m.end()
    parts.append(_JSON_WORDS.sub(lambda w: w[1].capitalize(), written[last:]))
    try:
        return ast.literal_eval("".join(parts))
    except (ValueError, SyntaxError):
        raise ValueError(
            f"condition {text!r}: {written!r} is not a literal (quote strings: 'fast'; booleans are true/false)"
        ) from None


def _literal(value: Any) -> str:
    """How a literal is written in a condition (booleans as true / false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class ConditionTypeError(ValueError):
    """A request parameter's type does not match the literal its condition compares it with."""


def holds(condition: Condition, actual: Any) -> bool:
    """Whether ``condition`` holds for ``actual``: the subject's value in this request (a numpy
    array, a parameter value, or None when it does not exist).

    Raises:
        ConditionTypeError: ``actual`` is a parameter whose type (boolean, number, string)
            differs from the literal's; the message names the parameter, both types and the fix.
    """
    op, value = condition.op, condition.value
    if actual is None:
        return op in (Op.NE, Op.NOT_IN)
    if isinstance(actual, np.ndarray):
        return _array_holds(actual, op, value)
    kind = _kind(actual)
    if op is Op.TRUTHY:
        if kind == "number":
            return bool(actual)
        if kind == "string" and actual.lower() in ("true", "false"):
            return bool(actual.lower() == "true")
        if kind != "boolean":
            raise ConditionTypeError(
                f"condition '{condition}' tests {condition.subject} as a boolean, but the request sent "
                f"{_describe(actual)}; send true or false"
            )
        return bool(actual)
    values = value if isinstance(value, tuple) else (value,)
    if values and all(_kind(v) != kind for v in values):
        wanted = " or ".join(sorted({_kind(v) for v in values}))
        raise ConditionTypeError(
            f"condition '{condition}' compares {condition.subject} with a {wanted}, but the request sent "
            f"{_describe(actual)}; send the parameter as a {wanted}, or write the condition for a {kind}"
        )
    if op in (Op.IN, Op.NOT_IN):
        found = any(_kind(v) == kind and actual == v for v in values)
        return found if op is Op.IN else not found
    if op is Op.EQ:
        return bool(actual == value)
    if op is Op.NE:
        return bool(actual != value)
    return bool(_ORDER[op](actual, value))


def _kind(value: Any) -> str:
    """A parameter's or literal's type as conditions compare them."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (str, bytes)):
        return "string"
    return type(value).__name__


def _describe(value: Any) -> str:
    shown = _literal(value) if _kind(value) != "string" else repr(value)
    return f"the {_kind(value)} {shown}"


_ORDER = {
    Op.LT: lambda a, b: a < b,
    Op.LE: lambda a, b: a <= b,
    Op.GT: lambda a, b: a > b,
    Op.GE: lambda a, b: a >= b,
}


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
