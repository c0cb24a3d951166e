"""Restricted APIs: Triton's ``--http-restricted-api`` and ``--grpc-restricted-protocol``.

Each flag value is ``<api>[,<api>...]:<header>=<value>``; a request to a restricted API must
carry that header with exactly that value. The APIs (Triton's categories) are
:data:`CATEGORIES`. Nothing is restricted by default, as in Triton.

As in Triton, the gRPC header is the configured key with the prefix ``triton-grpc-protocol-``
(``--grpc-restricted-protocol model-repository:admin-key=s3cret`` expects the metadata
``triton-grpc-protocol-admin-key: s3cret``), while HTTP expects the header as configured.
A refused HTTP request gets 403 and ``{"error": "This API is restricted, expecting header
'<header>'"}`` (Triton's message); a refused gRPC call gets ``PERMISSION_DENIED`` with
``This protocol is restricted, expecting header '<header>'`` (Triton's message; Triton itself
answers ``UNAVAILABLE``, a code clients may retry on, which a refusal should not invite).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CATEGORIES",
    "GRPC_HEADER_PREFIX",
    "RestrictedASGI",
    "Restrictions",
    "grpc_denied",
    "grpc_interceptor",
    "http_category",
]

CATEGORIES = (
    "health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
    "statistics", "trace", "logging",
)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True, slots=True)
class Restrictions:
    """Which API categories need which ``(header, value)``; empty = everything open."""

    rules: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, values: Iterable[str], *, header_prefix: str = "", flag: str = "restricted api") -> Restrictions:
        """Parse flag values ``<api>[,<api>...]:<header>=<value>`` (one per flag use).

        ``header_prefix`` is prepended to each header name (``GRPC_HEADER_PREFIX`` for gRPC).
        Header names are matched case-insensitively, values exactly.

        Raises:
            ValueError: malformed value, unknown API, or an API named in two values; the
                message names ``flag``.
        """
        rules: dict[str, tuple[str, str]] = {}
        for value in values:
            apis, colon, setting = value.partition(":")
            header, equals, expected = setting.partition("=")
            if not colon or not equals or not apis or not header:
                raise ValueError(f"{flag}: expected <api>[,<api>...]:<header>=<value>, got {value!r}")
            for api in apis.split(","):
                api = api.strip()
                if api not in CATEGORIES:
                    raise ValueError(f"{flag}: unknown API '{api}' (known: {', '.join(CATEGORIES)})")
                if api in rules:
                    raise ValueError(f"{flag}: API '{api}' can not be specified in multiple config groups")
                rules[api] = ((header_prefix + header.strip()).lower(), expected)
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def denied(self, category: str | None, lookup: Callable[[str], str | bytes | None]) -> str | None:
        """``None`` when a request of ``category`` may proceed, else the refusal message.

        ``lookup(name)`` returns the request's header ``name`` (lower-case) or ``None``.
        """
        if category is None:
            return None
        rule = self.rules.get(category)
        if rule is None:
            return None
        header, expected = rule
        actual = lookup(header)
        if isinstance(actual, str):
            actual = actual.encode("latin-1", errors="replace")
        if actual is None or not hmac.compare_digest(actual, expected.encode("latin-1", errors="replace")):
            return header
        return None

    def denied_http(self, category: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """:meth:`denied` for an HTTP request's ``headers`` (ASGI's ``(name, value)`` bytes
        pairs; names matched case-insensitively)."""
        if category is None or category not in self.rules:
            return None

        def lookup(name: str) -> bytes | None:
            key = name.encode("latin-1")
            for k, v in headers:
                if k.lower() == key:
                    return v
            return None

        return self.denied(category, lookup)


# ----------------------------------------------------------------------------------- HTTP


def http_category(method: str, path: str) -> str | None:
    """The Triton API category of an HTTP request, ``None`` for a path of no category."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 2 or parts[1] != "v2":
        return None
    rest = parts[2:]
    if not rest:
        return "metadata"  # GET /v2
    head = rest[0]
    if head == "health":
        return "health"
    if head == "repository":
        return "model-repository"
    if head in ("systemsharedmemory", "cudasharedmemory"):
        return "shared-memory"
    if head == "trace":
        return "trace"
    if head == "logging":
        return "logging"
    if head != "models":
        return None
    tail = rest[1:]
    if tail == ["stats"]:
        return "statistics"
    if len(tail) >= 3 and tail[1] == "versions":
        tail = [tail[0], *tail[3:]]
    if len(tail) == 1:
        return "metadata"
    last = tail[-1]
    return {
        "ready": "health",
        "config": "model-config",
        "stats": "statistics",
        "infer": "inference",
        "generate": "inference",
        "generate_stream": "inference",
        "setting": "trace",
    }.get(last)


def _forbidden_body(header: str) -> bytes:
    return json.dumps({"error": f"This API is restricted, expecting header '{header}'"}).encode()


def http_forbidden(header: str) -> tuple[int, bytes]:
    """The status and JSON body of a refused HTTP request (Triton's)."""
    return 403, _forbidden_body(header)


class RestrictedASGI:
    """ASGI middleware refusing restricted HTTP APIs (see the module doc)."""

    def __init__(self, app: ASGIApp, restrictions: Restrictions) -> None:
        self.app = app
        self.restrictions = restrictions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: Sequence[tuple[bytes, bytes]] = scope.get("headers") or ()
            header = self.restrictions.denied_http(http_category(scope["method"], scope["path"]), headers)
            if header is not None:
                status, body = http_forbidden(header)
                await send({
                    "type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                })
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------------- gRPC

_GRPC_CATEGORIES = {
    "ServerLive": "health", "ServerReady": "health", "ModelReady": "health", "Check": "health", "Watch": "health",
    "ServerMetadata": "metadata", "ModelMetadata": "metadata",
    "ModelInfer": "inference", "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository", "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory", "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory", "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory", "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace", "LogSettings": "logging",
}


def grpc_denied(restrictions: Restrictions, method: str, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The PERMISSION_DENIED message for a call of ``method`` (its bare name) whose metadata
    is ``headers`` (lower-case names, as HTTP/2 sends them), or ``None`` when it may proceed:
    the native gRPC server's form of :func:`grpc_interceptor`."""
    header = restrictions.denied_http(_GRPC_CATEGORIES.get(method), headers)
    return None if header is None else f"This protocol is restricted, expecting header '{header}'"


def grpc_interceptor(restrictions: Restrictions) -> grpc.aio.ServerInterceptor:
    """A ``grpc.aio`` server interceptor refusing restricted calls with PERMISSION_DENIED.

    grpc is imported here, not with the module, so the CLI can parse flags without it.
    """
    import grpc

    class Interceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(
            self,
            continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails,
        ) -> grpc.RpcMethodHandler:
            handler = await continuation(handler_call_details)
            method = handler_call_details.method.rsplit("/", 1)[-1]
            metadata = {k.lower(): v for k, v in (handler_call_details.invocation_metadata or ())}
            header = restrictions.denied(_GRPC_CATEGORIES.get(method), metadata.get)
            if header is None or handler is None:
                return handler
            return _denying_handler(grpc, handler, f"This protocol is restricted, expecting header '{header}'")

    return Interceptor()


def _denying_handler(grpc: Any, handler: Any, message: str) -> Any:
    """A handler of ``handler``'s kind (unary/stream either way) that aborts with
    PERMISSION_DENIED and ``message`` before reading anything."""

    async def deny(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(deny, handler.request_deserializer, handler.response_serializer)
