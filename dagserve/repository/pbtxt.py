"""Triton ``config.pbtxt`` files: protobuf text format of Triton's ``ModelConfig`` message.

Parsing goes through protobuf itself with the ``ModelConfig`` definition from our copy of
``model_config.proto``, so every file Triton accepts parses the same way here, and a typo gets
protobuf's message with its line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from .._proto import model_config_pb2
from ..errors import ConfigError

__all__ = ["pbtxt_to_dict"]


def pbtxt_to_dict(text: str, *, path: Path) -> dict[str, Any]:
    """The fields set in a ``config.pbtxt``, as a dict with Triton's field names.

    Raises:
        ConfigError: ``path:line:column: message`` for text protobuf cannot parse.
    """
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}:{exc}") from None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
