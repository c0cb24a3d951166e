"""Triton ``config.pbtxt`` files: protobuf text format of Triton's ``ModelConfig`` message.

Parsing goes through protobuf itself with the ``ModelConfig`` definition from our copy of
``model_config.proto``, so every file Triton accepts parses the same way here, and a typo gets
protobuf's message with its line and column. A field of Triton's schema that dagserve does not
implement is refused here too, with its line (the schema in :mod:`.config` says which).
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

__all__ = ["pbtxt_to_dict"]


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
        raise ConfigError(f"{path}:{exc}") from None
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _refuse_unsupported(data, text, path)
    return data


def _refuse_unsupported(data: dict[str, Any], text: str, path: Path) -> None:
    try:
        ModelConfig.model_validate(data)
    except ValidationError as exc:
        found = [e for e in exc.errors() if e["type"] == "unsupported"]
        if not found:
            return  # other problems are reported by the loader, field by field
        seen: dict[str, int] = {}
        lines = []
        for e in found:
            name = str(e["loc"][-1])
            nth = seen.get(name, 0)
            seen[name] = nth + 1
            where = _line_of(text, name, nth)
            lines.append(f"{path}:{where}: field '{_loc(e['loc'])}': {e['msg']}" if where else
                         f"{path}: field '{_loc(e['loc'])}': {e['msg']}")
        raise ConfigError("; ".join(lines)) from None


def _line_of(text: str, field: str, nth: int) -> int | None:
    """The line of the ``nth`` place (0-based) where ``field`` is set, ignoring comments; the
    first one when there are fewer."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(field)}\s*[:{{\[]")
    hits = [i for i, line in enumerate(text.splitlines(), 1) if pattern.search(line.split("#", 1)[0])]
    if not hits:
        return None
    return hits[nth] if nth < len(hits) else hits[0]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
