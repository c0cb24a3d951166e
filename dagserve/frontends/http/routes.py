"""The HTTP/REST frontend: KServe v2 plus the Triton extensions ``tritonclient.http`` uses.

Thin by design: each route decodes, calls one :class:`dagserve.engine.Server` method and
encodes. Tensor (de)serialization lives in :mod:`dagserve.frontends.http_codec`; the error to
status mapping in :mod:`dagserve.frontends.status`.

``/infer`` is one transport-free :class:`~.http_infer.InferCore` (decode, ``Server.infer``,
encode, every error to a status): dagserve's own HTTP/1.1 server (:mod:`.http_server`) calls
it directly; the ASGI app here wraps it in a plain ASGI callable, no ``Request``/``Response``
objects in between. Everything else is ordinary starlette, which the HTTP/1.1 server reaches
through an ASGI bridge.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigError, InvalidInputError, ModelNotFoundError
from ..limits import Limits
from ..types import InferResponse
from .asgi import serve_asgi
from .generate import SSEResponse, generate_request, generate_response
from .http_codec import BodyTooLargeError, decompress_body
from .http_infer import InferCore, InferReply
from .limits import HttpLimits
from .restricted import RestrictedASGI, Restrictions
from .status import status_for
from .tls import TLSConfig

if TYPE_CHECKING:
    from ..engine import Server

__all__ = ["create_app", "serve_http"]

log = logging.getLogger("dagserve.frontends")




class _ClientDisconnected(Exception):
    """The client went away before its request body arrived; nothing is sent back."""


# ------------------------------------------------------------------------------- /infer


async def _read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The request body, read chunk by chunk; stops reading as soon as it passes ``limit``.

    Raises:
        BodyTooLargeError: ``Content-Length`` or the bytes received exceed ``limit``.
        _ClientDisconnected: the client hung up first.
    """
    if declared is not None and declared > limit:
        raise BodyTooLargeError(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]  # the usual case: no copy
    return b"".join(chunks)


_WATCH_AFTER = 0.002
"""Seconds a request runs before the ASGI endpoint starts watching for the client's
disconnect."""


class _InferEndpoint:
    """ASGI app for the infer routes: reads the body through ``receive``, serves it with
    :class:`InferCore`, sends the reply as one ``bytes`` body.

    The ASGI server behind it (uvicorn, when httptools is missing, or starlette's test
    client) tells of a disconnect only through ``receive``, so a request still running after
    :data:`_WATCH_AFTER` gets a watcher that cancels it when the client goes away.
    """

    __slots__ = ("_core",)

    def __init__(self, core: InferCore) -> None:
        self._core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path_params = scope["path_params"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        content_length: bytes | None = None
        for key, value in headers:
            if key == b"content-length":
                content_length = value
                break
        core = self._core
        try:
            declared = core.declared_size(content_length)
            body = await _read_body(receive, core.limit, declared)
        except _ClientDisconnected:
            return
        except InvalidInputError as exc:  # a malformed Content-Length: the body's end is unknown
            await _send_reply(send, core.error(exc, close=True))
            return
        except BodyTooLargeError as exc:
            await _send_reply(send, core.error(exc))
            return
        reply = await _until_disconnect(
            receive, core.reply(path_params["model"], path_params.get("version", ""), headers, body)
        )
        if reply is not None:
            await _send_reply(send, reply)


async def _send_reply(send: Send, reply: InferReply) -> None:
    headers = [*reply.headers, (b"content-length", str(len(reply.body)).encode())]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _until_disconnect(receive: Receive, work: Awaitable[InferReply]) -> InferReply | None:
    """Await ``work``, cancelling it if the client disconnects first; ``None`` then.

    Watching costs a task per request, so it starts only once the request has run for
    :data:`_WATCH_AFTER` seconds: quick requests, the bulk, pay only for a timer. Plain
    asyncio on purpose: a native ``Task.cancel`` costs a fraction of an anyio cancel scope.
    """
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    def arm() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(_WATCH_AFTER, arm)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            return None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


# ------------------------------------------------------------------------- other routes

_Handler = Callable[[Request], Awaitable[Response]]


def _json_response(content: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
    )


def _error_response(exc: BaseException) -> Response:
    status = status_for(exc)
    return _json_response({"error": status.message}, status.http)


def _guarded(handler: _Handler) -> _Handler:
    """Wrap a route handler so any exception becomes ``{"error": ...}`` with its status."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except BodyTooLargeError as exc:
            response = _json_response({"error": str(exc)}, 413)
            response.headers["connection"] = "close"
            return response
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes a status
            return _error_response(exc)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _json_body(request: Request, limit: int, limits: Limits) -> dict[str, Any]:
    """The request's JSON object body, ``{}`` when empty.

    Raises:
        BodyTooLargeError: over ``limit``.
        InvalidInputError: not a JSON object, or nested deeper than ``limits`` allow.
    """
    declared = request.headers.get("content-length")
    try:
        size = int(declared) if declared else None
    except ValueError:
        raise InvalidInputError("Content-Length is not an integer") from None
    try:
        body = await _read_body(request.receive, limit, size)
    except _ClientDisconnected:
        body = b""
    encoding = request.headers.get("content-encoding")
    if encoding:
        body = decompress_body(body, encoding, limit)
    if not body.strip():
        return {}
    limits.check_json(body)  # security: limits before parsing
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"malformed JSON in request body: {exc}") from None
    if type(doc) is not dict:
        raise InvalidInputError("request body must be a JSON object")
    return doc


def _routes(core: InferCore, server: Server, max_body_size: int) -> list[Route]:
    infer = _InferEndpoint(core)

    async def health_live(request: Request) -> Response:
        """200 when the server is live, else 400 (as Triton); empty body either way."""
        return Response(status_code=200 if server.is_live() else 400)

    async def health_ready(request: Request) -> Response:
        """200 when the server is ready, else 400 (as Triton); empty body either way."""
        return Response(status_code=200 if server.is_ready() else 400)

    async def server_metadata(request: Request) -> Response:
        return _json_response(
            {"name": server.name, "version": server.version, "extensions": list(server.extensions)}
        )

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        return _json_response(server.model_metadata(p["model"], p.get("version", "")))

    async def model_ready(request: Request) -> Response:
        """200 when ready, else 400, as Triton: also for an unknown model or a version it
        does not serve (its core answers "not ready" there, not "not found")."""
        p = request.path_params
        try:
            ready = server.model_ready(p["model"], p.get("version", ""))
        except ModelNotFoundError as exc:
            return _json_response({"error": str(exc)}, 400)
        if ready:
            return Response(status_code=200)
        return _json_response({"error": f"model '{p['model']}' is not ready"}, 400)

    async def model_config(request: Request) -> Response:
        p = request.path_params
        return _json_response(server.model_config(p["model"], p.get("version", "")))

    async def model_stats(request: Request) -> Response:
        p = request.path_params
        return _json_response(server.statistics(p.get("model", ""), p.get("version", "")))

    async def repository_index(request: Request) -> Response:
        body = await _json_body(request, max_body_size, server.options.limits)
        ready = body.get("ready", False)
        if type(ready) is not bool:
            raise InvalidInputError("repository index 'ready' must be true or false")
        return _json_response(server.repository_index(ready_only=ready))

    async def repository_load(request: Request) -> Response:
        body = await _json_body(request, max_body_size, server.options.limits)
        parameters = body.get("parameters")
        if parameters is not None and type(parameters) is not dict:
            raise InvalidInputError("load request 'parameters' must be a JSON object")
        await server.load_model(request.path_params["model"], parameters or None)
        return _json_response({})

    async def repository_unload(request: Request) -> Response:
        body = await _json_body(request, max_body_size, server.options.limits)
        parameters = body.get("parameters") or {}
        if type(parameters) is not dict:
            raise InvalidInputError("unload request 'parameters' must be a JSON object")
        dependents = parameters.get("unload_dependents", False)
        if type(dependents) is not bool:
            raise InvalidInputError("unload_dependents must be true or false")
        await server.unload_model(request.path_params["model"], unload_dependents=dependents)
        return _json_response({})

    async def generate(request: Request) -> Response:
        """Triton's generate extension: one request, one JSON answer."""
        p = request.path_params
        body = await _json_body(request, max_body_size, server.options.limits)
        engine_request = generate_request(server, p["model"], p.get("version", ""), body)
        answers: list[InferResponse] = []

        async def collect(response: InferResponse) -> None:
            if response.outputs or not response.final:
                answers.append(response)

        await server.infer_stream(p["model"], p.get("version", ""), engine_request, collect)
        if len(answers) != 1:
            raise InvalidInputError(
                f"model '{p['model']}' sent {len(answers)} responses; use /generate_stream for 0 or many"
            )
        return _json_response(generate_response(answers[0]))

    async def generate_stream(request: Request) -> Response | SSEResponse:
        """Triton's generate extension: every response as a server-sent event."""
        p = request.path_params
        body = await _json_body(request, max_body_size, server.options.limits)
        engine_request = generate_request(server, p["model"], p.get("version", ""), body)
        return SSEResponse(server, p["model"], p.get("version", ""), engine_request)

    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    get = ["GET"]
    post = ["POST"]
    # Order matters twice: /infer first, so the hot path costs one regex match, and the
    # literal /v2/models/stats before /v2/models/{model} would swallow it.
    return [
        Route(model + "/infer", infer, methods=post),
        Route(version + "/infer", infer, methods=post),
        Route("/v2/health/live", _guarded(health_live), methods=get),
        Route("/v2/health/ready", _guarded(health_ready), methods=get),
        Route("/v2", _guarded(server_metadata), methods=get),
        Route("/v2/models/stats", _guarded(model_stats), methods=get),
        Route(model, _guarded(model_metadata), methods=get),
        Route(version, _guarded(model_metadata), methods=get),
        Route(model + "/ready", _guarded(model_ready), methods=get),
        Route(version + "/ready", _guarded(model_ready), methods=get),
        Route(model + "/config", _guarded(model_config), methods=get),
        Route(version + "/config", _guarded(model_config), methods=get),
        Route(model + "/stats", _guarded(model_stats), methods=get),
        Route(version + "/stats", _guarded(model_stats), methods=get),
        Route(model + "/generate", _guarded(generate), methods=post),
        Route(version + "/generate", _guarded(generate), methods=post),
        Route(model + "/generate_stream", _guarded(generate_stream), methods=post),  # type: ignore[arg-type]
        Route(version + "/generate_stream", _guarded(generate_stream), methods=post),  # type: ignore[arg-type]
        Route("/v2/repository/index", _guarded(repository_index), methods=post),
        Route("/v2/repository/models/{model}/load", _guarded(repository_load), methods=post),
        Route("/v2/repository/models/{model}/unload", _guarded(repository_unload), methods=post),
    ]


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown route / wrong method: the protocol's ``{"error": ...}`` body, not plain text."""
    assert isinstance(exc, HTTPException)
    return _json_response({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code)


class _App:
    """The ASGI application: ``POST …/infer`` goes straight to the infer endpoint, everything
    else through starlette's router.

    The shortcut skips starlette's middleware and regex routing, several coroutine layers per
    request, on the one route whose cost matters.
    """

    __slots__ = ("_infer", "_starlette")

    def __init__(self, infer: _InferEndpoint, starlette: ASGIApp) -> None:
        self._infer = infer
        self._starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = InferCore.target(scope["path"])
            if target is not None:
                scope["path_params"] = {"model": target[0], "version": target[1]}
                return await self._infer(scope, receive, send)
        await self._starlette(scope, receive, send)


def _build(
    server: Server, max_body_size: int, restricted: Restrictions | None = None
) -> tuple[InferCore, ASGIApp]:
    if max_body_size <= 0:
        raise ValueError(f"max_body_size must be positive, got {max_body_size}")
    core = InferCore(server, max_body_size, restricted)
    starlette: ASGIApp = Starlette(
        routes=_routes(core, server, max_body_size),
        exception_handlers={HTTPException: _http_exception},
    )
    if restricted:  # security: restricted API categories (InferCore checks /infer itself)
        starlette = RestrictedASGI(starlette, restricted)
    return core, starlette


def create_app(server: Server, *, max_body_size: int, restricted: Restrictions | None = None) -> ASGIApp:
    """The ASGI application serving ``server`` over KServe v2 / Triton HTTP.

    ``max_body_size`` bounds every request body in bytes, both as sent and once
    decompressed; a larger one is answered 413 and its connection closed. ``restricted``
    closes API categories behind a header (:mod:`.restricted`).
    """
    core, starlette = _build(server, max_body_size, restricted)
    return _App(_InferEndpoint(core), starlette)


# --------------------------------------------------------------------------------- serve


async def serve_http(
    server: Server,
    *,
    host: str,
    port: int,
    max_body_size: int,
    shutdown_timeout: float = 30,
    restricted: Restrictions | None = None,
    tls: TLSConfig | None = None,
    limits: HttpLimits | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server`` over HTTP on ``host:port`` until cancelled.

    ``restricted`` closes API categories behind a header (:mod:`.restricted`); ``tls``
    serves HTTPS (:mod:`.tls`; dagserve's own server only, not the uvicorn fallback).

    Runs dagserve's own HTTP/1.1 server (:mod:`.http_server`) inside the current event loop
    on a socket bound first, so ``port=0`` works: ``task_status.started(port)`` reports the
    port actually bound (connections queue from then on). ``/infer`` is served directly,
    every other route by the starlette app. Without ``httptools`` it falls back to uvicorn
    serving :func:`create_app`. No signal handlers are installed (the CLI owns signals) and
    logging configuration is left alone. On cancellation it stops accepting (closes the
    listening socket), answers the requests in flight with ``connection: close`` (for at most
    ``shutdown_timeout`` seconds, then aborts them), then the cancellation propagates.
    ``limits`` bounds slow and idle clients (:class:`~.limits.HttpLimits`).

    Raises:
        OSError: the address cannot be bound.
        ConfigError: a TLS file is unusable, or TLS is asked of the uvicorn fallback.
    """
    ssl_context = tls.ssl_context() if tls is not None else None  # security: HTTPS
    try:
        from .http_server import serve_http11
    except ImportError as exc:  # httptools is part of uvicorn[standard], but may be absent
        if ssl_context is not None:
            raise ConfigError(f"HTTPS needs dagserve's own HTTP server, which cannot run: {exc}") from None
        log.warning("HTTP frontend: %s; serving through uvicorn instead", exc)
        await serve_asgi(
            create_app(server, max_body_size=max_body_size, restricted=restricted),
            host=host,
            port=port,
            shutdown_timeout=int(shutdown_timeout),
            limits=limits,
            task_status=task_status,
        )
        return
    core, starlette = _build(server, max_body_size, restricted)
    await serve_http11(
        starlette, core, host=host, port=port, shutdown_timeout=shutdown_timeout, limits=limits, ssl=ssl_context,
        task_status=task_status,
    )
