"""The request parameters the server itself reads, checked before a request is queued.

Triton reserves a few request parameters (its schedule-policy and sequence extensions, and the
HTTP ``binary_data_output``); a value of the wrong type is refused with INVALID_ARGUMENT
before the request reaches a scheduler, whatever the model. The rules follow Triton's frontends
(``http_server.cc``, ``grpc/infer_handler.cc``):

* ``priority``: an integer >= 0; 0 means the model's default level. Against a dynamic
  batcher with ``priority_levels`` it must also be within 1..levels (Triton quietly uses the
  default level for a larger one; dagserve refuses it, so a client learns its priority was not
  applied). A model without priority levels (no dynamic batcher, or none configured) has one
  level and ignores the value, as Triton does: a pipeline passes the request's priority to every
  step, and a step without levels must not refuse it. A pipeline checks it against the fewest
  levels among its members that have them, before any step runs.
* ``timeout``: an integer >= 0, microseconds.
* ``sequence_id``: an integer 0..2**64-1 or a string; ``sequence_start`` / ``sequence_end``:
  booleans.
* ``binary_data_output``: a boolean.

Other parameters are the model's business and pass through unchecked.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError

__all__ = ["check_parameters", "check_priority"]

_UINT64_MAX = 2**64 - 1


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but ``"priority": true`` is a client bug, not priority 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _whole(name: str, value: Any, owner: str, alternative: str = "") -> None:
    if not _is_int(value) or not 0 <= int(value) <= _UINT64_MAX:
        raise InvalidInputError(
            f"{owner}: parameter '{name}' must be an integer from 0 to {_UINT64_MAX}{alternative}, not {value!r}"
        )


def _flag(name: str, value: Any, owner: str) -> None:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{owner}: parameter '{name}' must be true or false, not {value!r}")


def check_parameters(parameters: Mapping[str, Any], owner: str) -> None:
    """Check the types of the reserved ``parameters`` of a request to ``owner`` (e.g.
    ``"model 'm'"``, which prefixes every message).

    Raises:
        InvalidInputError: naming the parameter, the expected type and the value received.
    """
    if not parameters:
        return
    for name in ("priority", "timeout"):
        value = parameters.get(name)
        if value is not None:
            _whole(name, value, owner)
    corrid = parameters.get("sequence_id")
    if corrid is not None and not isinstance(corrid, str):
        _whole("sequence_id", corrid, owner, " or a string")
    for name in ("sequence_start", "sequence_end", "binary_data_output"):
        value = parameters.get(name)
        if value is not None:
            _flag(name, value, owner)


def check_priority(parameters: Mapping[str, Any], levels: int, owner: str) -> None:
    """Check a request's ``priority`` (type-checked by :func:`check_parameters`) against a
    dynamic batcher of ``levels`` priority levels: 0 (the default level) or 1..levels.

    Raises:
        InvalidInputError: a priority above ``levels``.
    """
    priority = parameters.get("priority")
    if priority and int(priority) > levels:
        raise InvalidInputError(
            f"{owner}: priority {int(priority)} is out of range (1 to {levels}); 0 picks the default level"
        )
