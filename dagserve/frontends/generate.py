"""Triton's generate extension: ``/generate`` (one JSON answer) and ``/generate_stream`` (SSE).

A generate request is a flat JSON object: each key but ``id`` and ``parameters`` names a model
input and holds its value (a scalar, or a list for a 1-D tensor); the model's config supplies
the datatype, and a batching model gets a batch of one. Each output comes back under its own
name, a scalar when it holds one element, strings for BYTES. ``/generate_stream`` sends every
response of a decoupled model as a server-sent event ``data: {...}``; an error ends the stream
with ``data: {"error": "..."}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.types import Receive, Scope, Send

from ..errors import InvalidInputError
from ..types import DataType, InferRequest, InferResponse, bytes_array
from .status import status_for

if TYPE_CHECKING:
    from ..engine import Server

__all__ = ["SSEResponse", "generate_request", "generate_response"]


def generate_request(server: Server, model: str, version: str, body: dict[str, Any]) -> InferRequest:
    """The engine request for a generate body.

    Raises:
        InvalidInputError: a key names no input, or a value does not fit its datatype.
    """
    target = server.get_version(model, version)
    specs = target.config.input_specs()
    parameters = body.get("parameters") or {}
    if type(parameters) is not dict:
        raise InvalidInputError("generate 'parameters' must be a JSON object")
    inputs: dict[str, np.ndarray] = {}
    for name, value in body.items():
        if name in ("id", "parameters"):
            continue
        spec = specs.get(name)
        if spec is None:
            raise InvalidInputError(
                f"model '{model}' has no input '{name}' (its inputs: {', '.join(specs) or 'none'})"
            )
        values = value if isinstance(value, list) else [value]
        try:
            if spec.datatype is DataType.BYTES:
                array = bytes_array(values)
            else:
                if any(isinstance(v, (str, dict, list)) or v is None for v in values):
                    raise ValueError("not a number")
                array = np.asarray(values, dtype=spec.datatype.numpy_dtype)
        except (ValueError, TypeError, OverflowError):
            raise InvalidInputError(f"input '{name}': value does not fit datatype {spec.datatype.value}") from None
        inputs[name] = array[np.newaxis] if target.config.batching else array
    request_id = body.get("id", "")
    return InferRequest(inputs=inputs, id=str(request_id), parameters=parameters)


def generate_response(response: InferResponse) -> dict[str, Any]:
    """A generate response's JSON object."""
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    for name, array in response.outputs.items():
        flat = np.asarray(array).reshape(-1)
        items = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in flat.tolist()]
        doc[name] = items[0] if len(items) == 1 else items
    return doc


class SSEResponse:
    """An ASGI response streaming one request's responses as server-sent events."""

    def __init__(self, server: Server, model: str, version: str, request: InferRequest) -> None:
        self._server = server
        self._model = model
        self._version = version
        self._request = request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        })

        async def emit(response: InferResponse) -> None:
            if response.final and not response.outputs:
                return  # a decoupled model's bare end-of-stream marker
            await send({"type": "http.response.body", "body": _event(generate_response(response)), "more_body": True})

        try:
            await self._server.infer_stream(self._model, self._version, self._request, emit)
        except Exception as exc:  # noqa: BLE001 - the stream is open: report in-band
            await send({
                "type": "http.response.body",
                "body": _event({"error": status_for(exc, request_id=self._request.id).message}),
                "more_body": True,
            })
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
