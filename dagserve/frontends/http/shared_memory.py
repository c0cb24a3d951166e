"""The HTTP routes of Triton's shared-memory extensions (``/v2/systemsharedmemory/...`` and
``/v2/cudasharedmemory/...``) over one :class:`~dagserve.shared_memory.SharedMemoryRegistry`.

Status is a ``GET``, register and unregister are ``POST``; a wrong method is 405. Register
and unregister answer 200 with an empty body, status a JSON array, errors ``{"error": ...}``
with the status of the one error table, as every route (:mod:`.routes` wraps these).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import InvalidInputError
from ...shared_memory import RegionKind, SharedMemoryRegistry

__all__ = ["shared_memory_routes"]

_Handler = Callable[[Request], Awaitable[Response]]
_JsonBody = Callable[[Request], Awaitable[dict[str, Any]]]


def shared_memory_routes(
    registry: SharedMemoryRegistry, json_body: _JsonBody, guarded: Callable[[_Handler], _Handler]
) -> list[Route]:
    """The routes; ``json_body`` reads a request's JSON object body (bounded, ``{}`` when
    empty) and ``guarded`` turns a handler's exceptions into error replies."""

    def region(request: Request) -> str:
        return str(request.path_params.get("region", ""))

    def status_handler(kind: RegionKind) -> _Handler:
        async def status(request: Request) -> Response:
            body = json.dumps(registry.status(kind, region(request)), separators=(",", ":")).encode()
            return Response(body, media_type="application/json")

        return status

    async def register_system(request: Request) -> Response:
        name = region(request)
        registry.check_allowed()  # Triton's order: allowed, a region name, then the body
        if not name:
            raise InvalidInputError("'region name' is necessary to register system shared memory region")
        body = await json_body(request)
        if "key" not in body:
            raise InvalidInputError("Shared memory register request has no 'key' field")
        if "byte_size" not in body:
            raise InvalidInputError("Shared memory register request has no 'byte_size' field")
        registry.register_system(name, body["key"], body.get("offset", 0), body["byte_size"])
        return Response(media_type="application/json")

    async def register_cuda(request: Request) -> Response:
        name = region(request)
        registry.check_allowed()
        if not name:
            raise InvalidInputError("'region name' is necessary to register cuda shared memory region")
        body = await json_body(request)
        handle = body.get("raw_handle")
        if handle is None:
            raise InvalidInputError("Shared memory register request has no 'raw_handle' field")
        encoded = handle.get("b64") if type(handle) is dict else None
        if type(encoded) is not str:
            raise InvalidInputError("Shared memory register request field 'raw_handle' must be {\"b64\": <base64>}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t") from None
        for field in ("device_id", "byte_size"):
            value = body.get(field)
            if type(value) is not int or value < 0:
                raise InvalidInputError(
                    f"Shared memory register request field '{field}' must be a non-negative integer"
                )
        registry.register_cuda(name, raw, body["device_id"], body["byte_size"])
        return Response(media_type="application/json")

    def unregister_handler(kind: RegionKind) -> _Handler:
        async def unregister(request: Request) -> Response:
            registry.unregister(kind, region(request))
            return Response(media_type="application/json")

        return unregister

    routes: list[Route] = []
    for family, kind, register in (
        ("systemsharedmemory", RegionKind.SYSTEM, register_system),
        ("cudasharedmemory", RegionKind.CUDA, register_cuda),
    ):
        base, one = f"/v2/{family}", f"/v2/{family}/region/{{region}}"
        status, unregister = guarded(status_handler(kind)), guarded(unregister_handler(kind))
        routes += [
            Route(base + "/status", status, methods=["GET"]),
            Route(one + "/status", status, methods=["GET"]),
            Route(base + "/register", guarded(register), methods=["POST"]),  # no name: Triton's 400
            Route(one + "/register", guarded(register), methods=["POST"]),
            Route(base + "/unregister", unregister, methods=["POST"]),
            Route(one + "/unregister", unregister, methods=["POST"]),
        ]
    return routes
