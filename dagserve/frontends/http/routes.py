"""The route table of the HTTP frontend (KServe v2 plus the Triton extensions
``tritonclient.http`` uses), and :func:`serve_http`, which serves it.

Thin by design: each route decodes, calls one :class:`dagserve.engine.Server` method and
encodes. ``POST /v2/models/{m}[/versions/{v}]/infer`` is :class:`~.infer.InferCore`, which the
server (:mod:`.server`) calls directly; every other route is ordinary starlette below, reached
through the server's ASGI bridge. Limits on the request head and body are the server's;
every error reply, from any route, is built by :mod:`.replies`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ...errors import InvalidInputError, ModelNotFoundError, RequestCancelledError
from ...limits import Limits
from ...log_settings import log_control
from ...shared_memory import SharedMemoryRegistry
from ...types import InferResponse
from ..accept import Balance
from ..generate import SSEResponse, generate_request, generate_response
from ..http_codec import decompress_body
from ..limits import HttpLimits
from ..restricted import RestrictedASGI, Restrictions
from ..tls import TLSConfig
from ..tracing import http_changes, trace_setting
from .infer import InferCore
from .replies import Reply, error_reply, json_error
from .server import serve_http11
from .shared_memory import shared_memory_routes

if TYPE_CHECKING:
    from ...engine import Server

__all__ = ["create_app", "serve_http"]


# ------------------------------------------------------------------------- other routes

_Handler = Callable[[Request], Awaitable[Response]]


def _json_response(content: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
    )


def _reply_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers={k.decode(): v.decode() for k, v in reply.headers})


def _guarded(handler: _Handler) -> _Handler:
    """Wrap a route handler so any exception becomes ``{"error": ...}`` with its status."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes a status
            return _reply_response(error_reply(exc))

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _json_body(request: Request, limit: int, limits: Limits) -> dict[str, Any]:
    """The request's JSON object body, ``{}`` when empty; ``limit`` bounds it decompressed
    (the server bounds it as sent).

    Raises:
        BodyTooLargeError: over the limit, as sent or decompressed.
        InvalidInputError: not a JSON object, or nested deeper than ``limits`` allow.
    """
    try:
        body = await request.body()
    except ClientDisconnect:
        raise RequestCancelledError("the client disconnected before sending its request body") from None
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


async def _infer_is_the_servers(request: Request) -> Response:
    """Never called: the server answers ``POST …/infer`` with :class:`~.infer.InferCore`."""
    raise AssertionError("POST /infer reached the ASGI app")


def _routes(server: Server, max_body_size: int, shared_memory: SharedMemoryRegistry) -> list[Route]:
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
            return _reply_response(json_error(400, str(exc)))
        if ready:
            return Response(status_code=200)
        return _reply_response(json_error(400, f"model '{p['model']}' is not ready"))

    async def model_config(request: Request) -> Response:
        p = request.path_params
        return _json_response(server.model_config(p["model"], p.get("version", "")))

    async def model_stats(request: Request) -> Response:
        p = request.path_params
        return _json_response(await server.gather_statistics(p.get("model", ""), p.get("version", "")))

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

    async def log_settings(request: Request) -> Response:
        """Triton's logging extension: GET reads the log settings, POST changes those it
        names; both answer every setting."""
        control = log_control()
        if request.method == "POST":
            body = await _json_body(request, max_body_size, server.options.limits)
            settings = control.update(body).as_dict()
            if server.peers is not None:  # --workers N: every worker logs alike
                await server.peers.call("log_settings", changes=body)
            return _json_response(settings)
        return _json_response(control.settings.as_dict())
    async def trace_settings(request: Request) -> Response:
        """Triton's trace extension: GET reads the settings, POST changes them first."""
        changes = None
        if request.method == "POST":
            changes = http_changes(await _json_body(request, max_body_size, server.options.limits))
        model = request.path_params.get("model", "")
        settings = trace_setting(server, model, changes)
        if changes and server.peers is not None:  # --workers N: every worker traces alike
            await server.peers.call("trace_setting", model=model, changes=changes)
        return _json_response(settings)

    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    get = ["GET"]
    post = ["POST"]
    # Order matters: the literal /v2/models/stats before /v2/models/{model} would swallow it.
    return [
        # InferCore: the server answers these without the app, which sees only a GET (405).
        Route(model + "/infer", _infer_is_the_servers, methods=post),
        Route(version + "/infer", _infer_is_the_servers, methods=post),
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
        Route("/v2/trace/setting", _guarded(trace_settings), methods=["GET", "POST"]),
        Route(model + "/trace/setting", _guarded(trace_settings), methods=["GET", "POST"]),
        Route("/v2/repository/index", _guarded(repository_index), methods=post),
        Route("/v2/repository/models/{model}/load", _guarded(repository_load), methods=post),
        Route("/v2/repository/models/{model}/unload", _guarded(repository_unload), methods=post),
        *shared_memory_routes(
            shared_memory, lambda request: _json_body(request, max_body_size, server.options.limits), _guarded
        ),
        Route("/v2/logging", _guarded(log_settings), methods=["GET", "POST"]),
    ]



async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown route / wrong method: the protocol's ``{"error": ...}`` body, not plain text."""
    assert isinstance(exc, HTTPException)
    return _reply_response(json_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"))


def create_app(
    server: Server,
    *,
    max_body_size: int,
    restricted: Restrictions | None = None,
    shared_memory: SharedMemoryRegistry | None = None,
) -> ASGIApp:
    """The ASGI application of every route but ``/infer`` (which the server answers with
    :class:`~.infer.InferCore`). ``max_body_size`` bounds a body once decompressed;
    ``restricted`` closes API categories behind a header (:mod:`..restricted`);
    ``shared_memory`` holds the registered shared-memory regions (default: none allowed)."""
    if shared_memory is None:
        shared_memory = SharedMemoryRegistry()
    app: ASGIApp = Starlette(
        routes=_routes(server, max_body_size, shared_memory),
        exception_handlers={HTTPException: _http_exception},
    )
    if restricted:  # security: restricted API categories (InferCore checks /infer itself)
        app = RestrictedASGI(app, restricted)
    return app


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
    shared_memory: SharedMemoryRegistry | None = None,
    reuse_port: bool = False,
    balance: Balance | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server`` over HTTP on ``host:port`` until cancelled.

    Runs the HTTP/1.1 server (:mod:`.server`) inside the current event loop on a socket bound
    first, so ``port=0`` works: ``task_status.started(port)`` reports the port actually bound
    (connections queue from then on). No signal handlers are installed (the CLI owns signals)
    and logging configuration is left alone. On cancellation it stops accepting (closes the
    listening socket), answers the requests in flight with ``connection: close`` (for at most
    ``shutdown_timeout`` seconds, then aborts them), then the cancellation propagates.

    ``max_body_size`` bounds every request body in bytes, as sent and once decompressed (413,
    and the connection closes); ``limits`` bounds the request head and slow or idle clients
    (:class:`~..limits.HttpLimits`); ``restricted`` closes API categories behind a header
    (:mod:`..restricted`); ``tls`` serves HTTPS (:mod:`..tls`); ``shared_memory`` is the
    registry of shared-memory regions, shared with the gRPC frontend (default: a registry of
    its own that allows none). ``reuse_port`` shares the port with the server's other worker
    processes (``--workers``), and ``balance`` places its connections evenly over them
    (:mod:`..accept`).

    Raises:
        OSError: the address cannot be bound.
        ConfigError: a TLS file is unusable.
        ValueError: ``max_body_size`` is not positive.
    """
    ssl_context = tls.ssl_context() if tls is not None else None  # security: HTTPS
    if shared_memory is None:
        shared_memory = SharedMemoryRegistry()
    await serve_http11(
        create_app(server, max_body_size=max_body_size, restricted=restricted, shared_memory=shared_memory),
        InferCore(server, max_body_size, restricted, shared_memory),
        host=host, port=port, shutdown_timeout=shutdown_timeout, limits=limits, max_body_size=max_body_size,
        ssl=ssl_context, reuse_port=reuse_port, balance=balance, task_status=task_status,
    )
