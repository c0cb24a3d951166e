"""The condition grammar shared by YAML and the DSL, and how conditions evaluate."""

from __future__ import annotations

import numpy as np
import pytest

from dagserve import TensorRef
from dagserve.dsl.conditions import Condition, ConditionTypeError, Op, Param, holds, parse_condition


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


def test_parameter_conditions_compare_by_type() -> None:
    """Parameters compare by their JSON type: a boolean with true/false, a number with a
    number, a string with a string; truthiness takes booleans, numbers and "true"/"false"."""
    assert holds(parse_condition("params.n >= 2"), 3)
    assert holds(parse_condition("params.n == 3"), 3.0)
    assert holds(parse_condition("params.on == true"), True)
    assert not holds(parse_condition("params.on == false"), True)
    assert holds(parse_condition("params.on != false"), True)
    assert holds(parse_condition("params.mode in ['a', 'b']"), "b")
    assert holds(parse_condition("params.flag"), True) and not holds(parse_condition("params.flag"), 0)
    assert not holds(parse_condition("params.flag"), "false") and holds(parse_condition("params.flag"), "True")
    assert not holds(parse_condition("params.on == true"), None) and holds(parse_condition("params.on != true"), None)


@pytest.mark.parametrize(
    ("text", "actual", "message"),
    [
        ("params.explain == 'true'", True, "compares params.explain with a string, but the request sent the boolean true"),
        ("params.explain == true", "true", "compares params.explain with a boolean, but the request sent the string 'true'"),
        ("params.n == 3", "3", "compares params.n with a number, but the request sent the string '3'"),
        ("params.n > 2", "many", "compares params.n with a number, but the request sent the string 'many'"),
        ("params.n == 1", True, "compares params.n with a number, but the request sent the boolean true"),
        ("params.mode in ['a', 'b']", 1, "compares params.mode with a string, but the request sent the number 1"),
        ("params.flag", "yes", "tests params.flag as a boolean, but the request sent the string 'yes'"),
    ],
)
def test_parameter_type_mismatch_is_an_error(text: str, actual: object, message: str) -> None:
    """A parameter of another type than the literal raises, naming both (never a silent false)."""
    with pytest.raises(ConditionTypeError) as caught:
        holds(parse_condition(text), actual)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("params.on == true", True),
        ("params.on == false", False),
        ("params.on == True", True),
        ("params.m in [true, 'a true b']", (True, "a true b")),
        ("params.m == 'true or false'", "true or false"),
    ],
)
def test_true_and_false_literals(text: str, value: object) -> None:
    """true/false (JSON and YAML spelling) are booleans outside quotes; inside, text."""
    assert parse_condition(text).value == value
    assert parse_condition(str(parse_condition(text))) == parse_condition(text)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("params.a == 1 or params.b == 2", "or"),
        ("params.a and params.b", "and"),
        ("not params.a", "not"),
        ("params.a == 1 and X > 2", "and"),
    ],
)
def test_connectives_are_named_as_unsupported(text: str, word: str) -> None:
    """and / or / not are refused with their name and what to write instead."""
    with pytest.raises(ValueError, match=f"'{word}' is not supported: a condition tests one subject"):
        parse_condition(text)
    assert parse_condition("params.k not in [1, 2]").op is Op.NOT_IN  # 'not in' is an operator


def test_order_operators_need_numbers() -> None:
    """'<', '>' and friends compare numbers; a text or boolean literal is refused at parse time."""
    for text in ("params.n > 'a'", "params.n <= true"):
        with pytest.raises(ValueError, match="compares numbers"):
            parse_condition(text)
