"""The condition grammar shared by YAML and the DSL, and how conditions evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from dagserve import TensorRef
from dagserve.dsl.conditions import Condition, Op, Param, holds, parse_condition


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("params.mode == 'fast'", Condition(subject=Param(name="mode"), op=Op.EQ, value="fast")),
        ("det.COUNT > 0", Condition(subject=TensorRef(step="det", name="COUNT"), op=Op.GT, value=0)),
        ("det.FOUND", Condition(subject=TensorRef(step="det", name="FOUND"))),
        (
            "params.kind not in ['a', 'b']",
            Condition(subject=Param(name="kind"), op=Op.NOT_IN, value=("a", "b")),
        ),
        ("X<=1.5", Condition(subject=TensorRef(name="X"), op=Op.LE, value=1.5)),
    ],
)
def test_parse(text: str, expected: Condition) -> None:
    """Each form of the grammar parses to the expected condition, and prints back parseable."""
    assert parse_condition(text) == expected
    assert parse_condition(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "a ==", "a == fast", "a == [1]", "a in 3", "x.y == __import__('os')"])
def test_bad_conditions_are_rejected(text: str) -> None:
    """Malformed conditions, bare words and non-literals raise ValueError (never evaluated)."""
    with pytest.raises(ValueError, match="condition"):
        parse_condition(text)


def test_tensor_conditions_hold_for_every_element() -> None:
    """A tensor condition needs a non-empty tensor whose every element satisfies it."""
    gt = parse_condition("X > 1")
    assert holds(gt, np.array([2, 3]))
    assert not holds(gt, np.array([2, 0]))
    assert not holds(gt, np.array([], dtype=np.int32))
    assert not holds(gt, None)
    assert holds(parse_condition("X != 1"), None)
    assert holds(parse_condition("X"), np.array([True]))
    assert not holds(parse_condition("X"), np.array([True, False]))


def test_bytes_tensors_compare_with_text() -> None:
    """BYTES tensors hold bytes; a str literal is compared encoded."""
    labels = np.array([b"cat"], dtype=object)
    assert holds(parse_condition("L == 'cat'"), labels)
    assert holds(parse_condition("L in ['cat', 'dog']"), labels)
    assert not holds(parse_condition("L not in ['cat']"), labels)


def test_parameter_conditions() -> None:
    """Parameters compare as values; text numbers and booleans match their literal."""
    assert holds(parse_condition("params.n >= 2"), 3)
    assert holds(parse_condition("params.n == 3"), "3")
    assert holds(parse_condition("params.on == True"), "true")
    assert not holds(parse_condition("params.n > 2"), "many")
    assert not holds(parse_condition("params.flag"), "false")
