"""Triton ``config.pbtxt`` files: protobuf text format of Triton's ``ModelConfig`` message.

Parsing goes through protobuf itself with the ``ModelConfig`` definition from our copy of
``model_config.proto``, so every file Triton accepts parses the same way here, and a typo gets
protobuf's message with its line and column (and, for a misspelt field or enum value, the
closest name: "did you mean 'dims'?"). A field of Triton's schema that dagserve does not
implement is refused here too, with its line (the schema in :mod:`.config` says which).
:func:`pbtxt_locations` indexes where each field is set, for the loader's field errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from pydantic import ValidationError

from .._proto import model_config_pb2
from ..errors import ConfigError
from .config import ModelConfig
from .locations import did_you_mean, loc_text, locate, pbtxt_index

__all__ = ["pbtxt_locations", "pbtxt_to_dict"]


def pbtxt_to_dict(text: str, *, path: Path) -> dict[str, Any]:
    """The fields set in a ``config.pbtxt``, as a dict with Triton's field names.

    Raises:
        ConfigError: ``path:line:column: message`` for text protobuf cannot parse;
            ``path:line: field 'a[0].b': not supported by dagserve: why`` for each field set
            that dagserve has no behaviour for.
    """
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}:{exc}{_hint(str(exc))}") from None
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for key, value in data.get("parameters", {}).items():
        if not value:  # string_value "" is protobuf's default, which MessageToDict leaves out
            data["parameters"][key] = {"string_value": ""}
    _refuse_unsupported(data, text, path)
    return data


def pbtxt_locations(text: str) -> dict[tuple[Any, ...], tuple[int, int]]:
    """Where each field of a ``config.pbtxt`` is set: path -> ``(line, column)``."""
    return pbtxt_index(text, model_config_pb2.ModelConfig.DESCRIPTOR)


_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_NO_VALUE = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')


def _hint(message: str) -> str:
    """" (did you mean 'x'?)" for protobuf's unknown-field and unknown-enum-value errors."""
    pool = model_config_pb2.DESCRIPTOR.pool
    found = _NO_FIELD.search(message)
    if found:
        try:
            fields = pool.FindMessageTypeByName(found.group(1)).fields_by_name
        except KeyError:
            return ""
        return did_you_mean(found.group(2), fields)
    found = _NO_VALUE.search(message)
    if found:
        try:
            values = pool.FindEnumTypeByName(found.group(1)).values_by_name
        except KeyError:
            return ""
        return did_you_mean(found.group(2), values)
    return ""


def _refuse_unsupported(data: dict[str, Any], text: str, path: Path) -> None:
    try:
        ModelConfig.model_validate(data)
    except ValidationError as exc:
        found = [e for e in exc.errors() if e["type"] == "unsupported"]
        if not found:
            return  # other problems are reported by the loader, field by field
        index = pbtxt_locations(text)
        lines = [
            f"{path}{locate(tuple(e['loc']), index, column=False)}: field '{loc_text(e['loc'])}': {e['msg']}"
            for e in found
        ]
        raise ConfigError("; ".join(lines)) from None
