"""The gRPC frontend: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``.

The servicers run on one of two servers inside the server's own asyncio event loop (the anyio
asyncio backend), beside the HTTP frontend: dagserve's own HTTP/2 server
(:func:`~.grpc_native.serve_grpc_native`, the default) or grpc.aio (:func:`serve_grpc`,
``--grpc-server grpcio``). They stay thin: decode the message (``grpc_codec``), call the
:class:`~dagserve.engine.Server`, encode the answer. Errors become gRPC statuses through the
one table in :mod:`dagserve.frontends.status`.

Entry point: :func:`serve_grpc`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import grpc
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from google.protobuf import json_format
from google.protobuf.message import Message

from .._proto import grpc_service_pb2 as pb
from .._proto import grpc_service_pb2_grpc as pb_grpc
from .._proto import health_pb2, health_pb2_grpc, model_config_pb2
from ..errors import InvalidInputError, ModelNotFoundError
from ..log_settings import log_control
from ..shared_memory import OutputTarget, SharedMemoryRegistry
from ..types import InferResponse
from .grpc_codec import decode_infer_request, decode_parameters, encode_infer_response
from .grpc_compression import grpc_level
from .grpc_shared_memory import SharedMemoryRPCs
from .limits import GrpcKeepalive
from .restricted import Restrictions, grpc_interceptor
from .status import status_for
from .tls import TLSConfig
from .tracing import grpc_changes, request_trace, trace_setting

if TYPE_CHECKING:
    from ..engine import Server

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "serve_grpc"]

log = logging.getLogger("dagserve.frontends.grpc")

DEFAULT_MAX_MESSAGE_SIZE = 2**31 - 1
"""Largest gRPC message accepted or sent (bytes): gRPC's own ceiling, as Triton sets it, so
any tensor that fits one message is served. Larger messages get RESOURCE_EXHAUSTED."""

STREAM_MAX_IN_FLIGHT = 1024
"""Requests of one ModelStreamInfer stream being processed at once. Past this the stream stops
reading, so gRPC flow control pushes back on the client instead of the server queueing
without bound."""

_HEALTH_WATCH_PERIOD = 1.0
_DRAIN_POLL = 0.02
"""Seconds between looks at a draining stream's requests in flight (only while stopping)."""

# Request parameters the frontend consumes itself rather than passing to the engine.
_ENABLE_EMPTY_FINAL = "triton_enable_empty_final_response"
_FINAL_RESPONSE = "triton_final_response"

_M = TypeVar("_M", bound=Message)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, request_id: str = "") -> NoReturn:
    """End the RPC with the status the error table gives ``exc``."""
    status = status_for(exc, request_id=request_id)
    await context.abort(status.grpc, status.message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


_S = TypeVar("_S")
_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)
_Handler = Callable[[_S, _Req, grpc.aio.ServicerContext], Awaitable[_Resp]]


def _rpc(method: _Handler[_S, _Req, _Resp]) -> _Handler[_S, _Req, _Resp]:
    """Make ``method`` an RPC boundary: any exception it raises ends the call with the status
    :func:`~dagserve.frontends.status.status_for` gives it (bugs become a generic INTERNAL)."""

    @functools.wraps(method)
    async def handler(self: _S, request: _Req, context: grpc.aio.ServicerContext) -> _Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes a status
            await _abort(context, exc, getattr(request, "id", ""))

    return handler


def _from_json(data: Mapping[str, Any], message: _M) -> _M:
    """Fill ``message`` from the engine's JSON shape (snake_case names, enums by name)."""
    return json_format.ParseDict(data, message, ignore_unknown_fields=True)


class InferenceServicer(SharedMemoryRPCs, pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over one :class:`~dagserve.engine.Server`.

    Each RPC either returns its response or aborts with a status from the error table; an
    unexpected exception reaches the client as INTERNAL with a generic message (details in
    the log).

    ``stopping`` is set when the server stops gracefully: a ``ModelStreamInfer`` stream then
    ends (status OK) as soon as it has no request in flight. ``shared_memory`` holds the
    registered shared-memory regions (default: a registry that allows none).
    """

    def __init__(
        self, server: Server, stopping: anyio.Event | None = None, shared_memory: SharedMemoryRegistry | None = None
    ) -> None:
        self._server = server
        self._stopping = stopping or anyio.Event()
        self._shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self.arrivals = 0
        """Inference calls (and streams) begun so far: a stop waits for them to stop coming in."""

    # -- health and metadata ----------------------------------------------------------------
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._server.is_live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._server.is_ready())

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        # As Triton: an unknown model, or a version it does not serve, is simply not ready.
        try:
            ready = self._server.model_ready(request.name, request.version)
        except ModelNotFoundError:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        server = self._server
        return pb.ServerMetadataResponse(
            name=server.name, version=server.version, extensions=server.extensions
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        data = self._server.model_metadata(request.name, request.version)
        return _from_json(data, pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        data = self._server.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=_from_json(data, model_config_pb2.ModelConfig()))

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        data = await self._server.gather_statistics(request.name, request.version)
        return _from_json(data, pb.ModelStatisticsResponse())

    # -- inference --------------------------------------------------------------------------
    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.arrivals += 1
        if self._server.tracing.enabled:
            with request_trace(self._server, request.model_name, "grpc", context.invocation_metadata() or ()):
                return await self._infer(request)
        return await self._infer(request)

    async def _infer(
        self, request: pb.ModelInferRequest, target: pb.ModelInferResponse | None = None
    ) -> pb.ModelInferResponse:
        """Decode, run and encode one request; raises what the codec or the engine raise."""
        shm = self._shared_memory
        decoded = decode_infer_request(
            request, drop_parameters=(_ENABLE_EMPTY_FINAL,), limits=self._server.options.limits, shared_memory=shm
        )
        targets = shm.output_targets(decoded.outputs)
        response = await self._server.infer(request.model_name, request.model_version, decoded)
        if targets:
            shm.write_outputs(response, targets)
        return encode_infer_response(response, request_id=request.id, target=target, in_shared_memory=targets)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Serve a bidirectional stream: every request is processed as soon as it arrives,
        concurrently with the others (up to :data:`STREAM_MAX_IN_FLIGHT`), and its response is
        written when ready, so responses may come out of request order.

        A failed request is answered in-stream with ``error_message`` (and its id) and the
        stream stays open. Every response carries ``triton_final_response``: true on the last
        response to a request. A decoupled model answers 0..N times; its bare end-of-stream
        marker is sent as an empty final response only when the request sets
        ``triton_enable_empty_final_response``, as Triton does.

        Returns when the client has closed its side and every response is written; if the
        client cancels, the pending requests are cancelled with it. During a graceful stop it
        returns once no request of the stream is in flight.
        """
        self.arrivals += 1
        send, receive = anyio.create_memory_object_stream[pb.ModelStreamInferResponse]()
        limiter = anyio.Semaphore(STREAM_MAX_IN_FLIGHT)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write_stream, receive, context)
            async with send:
                watcher = anyio.CancelScope()
                with anyio.CancelScope() as reading:
                    tg.start_soon(self._end_when_stopping, reading, watcher, limiter)
                    metadata = tuple(context.invocation_metadata() or ())
                    async for request in request_iterator:
                        await limiter.acquire()
                        tg.start_soon(self._stream_one, request, send.clone(), limiter, metadata)
                watcher.cancel()  # the client closed its side

    async def _end_when_stopping(
        self, reading: anyio.CancelScope, watcher: anyio.CancelScope, limiter: anyio.Semaphore
    ) -> None:
        """Once the server is stopping and the stream has nothing in flight, stop reading it."""
        with watcher:
            await self._stopping.wait()
            while limiter.value < STREAM_MAX_IN_FLIGHT:
                await anyio.sleep(_DRAIN_POLL)
            reading.cancel()

    async def _stream_one(
        self,
        request: pb.ModelInferRequest,
        send: MemoryObjectSendStream[pb.ModelStreamInferResponse],
        limiter: anyio.Semaphore,
        metadata: tuple[Any, ...] = (),
    ) -> None:
        param = request.parameters.get(_ENABLE_EMPTY_FINAL)
        empty_final_wanted = param is not None and param.bool_param
        shm = self._shared_memory
        targets: dict[str, OutputTarget] = {}

        async def emit(response: InferResponse) -> None:
            # A decoupled model's bare "no more responses" goes out only if the client asked.
            if response.final and not response.outputs and not empty_final_wanted:
                return
            message = pb.ModelStreamInferResponse()
            if targets:
                shm.write_outputs(response, targets)
            encode_infer_response(
                response, request_id=request.id, target=message.infer_response, in_shared_memory=targets
            )
            message.infer_response.parameters[_FINAL_RESPONSE].bool_param = response.final
            await send.send(message)

        async with send:
            try:
                decoded = decode_infer_request(
                    request, drop_parameters=(_ENABLE_EMPTY_FINAL,), limits=self._server.options.limits,
                    shared_memory=shm,
                )
                targets.update(shm.output_targets(decoded.outputs))
                if self._server.tracing.enabled:
                    with request_trace(self._server, request.model_name, "grpc", metadata):
                        await self._server.infer_stream(request.model_name, request.model_version, decoded, emit)
                else:
                    await self._server.infer_stream(request.model_name, request.model_version, decoded, emit)
            except Exception as exc:  # noqa: BLE001 - reported in-stream, the stream goes on
                message = pb.ModelStreamInferResponse()
                message.error_message = status_for(exc, request_id=request.id).message
                # Name the request the error belongs to, as Triton does, so a client with many
                # requests in flight can tell which one failed.
                failed = message.infer_response
                failed.id, failed.model_name = request.id, request.model_name
                failed.model_version = request.model_version
                failed.parameters[_FINAL_RESPONSE].bool_param = True
                await send.send(message)
            finally:
                limiter.release()

    @staticmethod
    async def _write_stream(
        receive: MemoryObjectReceiveStream[pb.ModelStreamInferResponse], context: grpc.aio.ServicerContext
    ) -> None:
        # The only writer of this stream: grpc.aio allows one write in flight at a time.
        async with receive:
            async for message in receive:
                await context.write(message)

    # -- repository -------------------------------------------------------------------------
    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        models = self._server.repository_index(ready_only=request.ready)
        return _from_json({"models": models}, pb.RepositoryIndexResponse())

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        params = decode_parameters(request.parameters)
        await self._server.load_model(request.model_name, params or None)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        params = decode_parameters(request.parameters)
        dependents = params.get("unload_dependents", False)
        if type(dependents) is not bool:
            raise InvalidInputError("unload_dependents must be a bool parameter (bool_param)")
        await self._server.unload_model(request.model_name, unload_dependents=dependents)
        return pb.RepositoryModelUnloadResponse()

    # -- logging extension ------------------------------------------------------------------
    @_rpc
    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogSettingsResponse:
        """Change the settings named in the request (none: only read them); answer them all.
        A setting sent without a value is left as it is, as a JSON null is over HTTP."""
        changes: dict[str, Any] = {}
        for name, value in request.settings.items():
            kind = value.WhichOneof("parameter_choice")
            changes[name] = None if kind is None else getattr(value, kind)
        control = log_control()
        settings = control.update(changes) if changes else control.settings
        if changes and self._server.peers is not None:  # --workers N: every worker logs alike
            await self._server.peers.call("log_settings", changes=changes)
        response = pb.LogSettingsResponse()
        for name, current in settings.as_dict().items():
            field = ("bool_param" if isinstance(current, bool)
                     else "uint32_param" if isinstance(current, int) else "string_param")
            setattr(response.settings[name], field, current)
        return response

    # -- trace extension --------------------------------------------------------------------
    # (the shared-memory RPCs come from SharedMemoryRPCs)
    @_rpc
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.TraceSettingResponse:
        """Triton's trace extension: update (when settings are given) and read the settings."""
        changes = grpc_changes(request.settings)
        settings = trace_setting(self._server, request.model_name, changes)
        if changes and self._server.peers is not None:  # --workers N: every worker traces alike
            await self._server.peers.call("trace_setting", model=request.model_name, changes=changes)
        response = pb.TraceSettingResponse()
        for name, value in settings.items():
            response.settings[name].value.extend(value if isinstance(value, list) else [value])
        return response


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``: service ``""`` (or the inference service's name) is the
    server's readiness; any other service name is a model name and reports that model's."""

    _SERVER_NAMES = ("", "inference.GRPCInferenceService")

    def __init__(self, server: Server, stopping: anyio.Event | None = None) -> None:
        self._server = server
        self._stopping = stopping or anyio.Event()

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus:
        """SERVING / NOT_SERVING. Raises ModelNotFoundError for an unknown model name."""
        Status = health_pb2.HealthCheckResponse
        if service in self._SERVER_NAMES:
            ready = self._server.is_ready()
        else:
            ready = self._server.model_ready(service)
        return Status.SERVING if ready else Status.NOT_SERVING

    @_rpc
    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The status now; NOT_FOUND for an unknown service, as the health protocol asks."""
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        """Send the status now and again whenever it changes, until the client leaves.

        The engine has no change notification, so the status is sampled every second. An
        unknown service is reported as SERVICE_UNKNOWN rather than failing the call, as the
        health protocol asks, so a client may watch for a model that is not loaded yet.
        When the server stops gracefully the stream gets the status then (NOT_SERVING for the
        server) and ends.
        """
        last = None
        while True:
            try:
                status = self._status(request.service)
            except ModelNotFoundError:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._stopping.is_set():
                return
            with anyio.move_on_after(_HEALTH_WATCH_PERIOD):
                await self._stopping.wait()


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    return f"{host}:{port}"


async def serve_grpc(
    server: Server,
    *,
    host: str,
    port: int,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    restricted: Restrictions | None = None,
    tls: TLSConfig | None = None,
    keepalive: GrpcKeepalive | None = None,
    shutdown_timeout: float = 30,
    shared_memory: SharedMemoryRegistry | None = None,
    reuse_port: bool = False,
    infer_compression_level: str = "none",
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server`` over gRPC on ``host:port`` until cancelled. ``reuse_port`` shares the
    port with the server's other worker processes (``--workers``; ``SO_REUSEPORT``).

    ``restricted`` closes API categories behind a metadata header (:mod:`.restricted`);
    ``tls`` serves TLS, with client certificates required when ``tls.mutual`` (:mod:`.tls`);
    ``shared_memory`` is the registry of shared-memory regions, shared with the HTTP frontend
    (default: a registry of its own that allows none).

    Port 0 binds a free port. Once listening, ``task_status.started(port)`` reports the bound
    port, so ``port = await tg.start(functools.partial(serve_grpc, server, ...))`` waits for
    readiness. Messages larger than ``max_message_size`` bytes, either way, are refused by
    gRPC with RESOURCE_EXHAUSTED.

    ``keepalive`` sets gRPC's keepalive and connection-age channel arguments (Triton's
    ``--grpc-keepalive-*`` flags).

    ``infer_compression_level`` (``none``, ``low``, ``medium``, ``high``: Triton's
    ``--grpc-infer-response-compression-level``) is gRPC's compression level for responses,
    the algorithm chosen by gRPC's core from what the client accepts
    (:mod:`.grpc_compression`). grpcio sets a level for the whole server only, so here it
    applies to every method's responses, not only to inference as on Triton.

    Must run on the asyncio backend (grpc.aio). On cancellation it stops accepting
    connections and calls (the listening socket closes), ends health watches and idle
    inference streams, lets the calls in flight finish for at most ``shutdown_timeout``
    seconds, then cancels them, and returns only once the port is released.

    Raises:
        OSError: the address could not be bound (e.g. the port is in use).
        ValueError: ``max_message_size`` is not within 1 .. 2**31-1 (gRPC's limit), or
            ``infer_compression_level`` is not a level.
        ConfigError: a TLS file is unusable.
    """
    if not 0 < max_message_size <= DEFAULT_MAX_MESSAGE_SIZE:
        raise ValueError(f"max_message_size must be 1..{DEFAULT_MAX_MESSAGE_SIZE}, got {max_message_size}")
    compression_level = grpc_level(infer_compression_level)
    options = [
        ("grpc.max_receive_message_length", max_message_size),
        ("grpc.max_send_message_length", max_message_size),
        # Fail on a port that is in use instead of silently sharing it with another process
        # (unless the other processes are this server's own workers).
        ("grpc.so_reuseport", int(reuse_port)),
        *(keepalive.channel_options() if keepalive is not None else ()),
        # gRPC's core picks gzip or deflate per call from the client's grpc-accept-encoding.
        *((("grpc.default_compression_level", compression_level),) if compression_level else ()),
    ]
    credentials = tls.grpc_credentials() if tls is not None else None  # security: TLS
    # security: restricted APIs; no interceptor (and no per-call cost) when nothing is restricted
    interceptors = [grpc_interceptor(restricted)] if restricted else None
    grpc_server = grpc.aio.server(options=options, interceptors=interceptors)
    stopping = anyio.Event()
    servicer = InferenceServicer(server, stopping, shared_memory)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(server, stopping), grpc_server)
    address = _address(host, port)
    try:
        if credentials is not None:
            bound = grpc_server.add_secure_port(address, credentials)
        else:
            bound = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio reports a failed bind as RuntimeError
        raise OSError(f"gRPC cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"gRPC cannot listen on {address}")
    await grpc_server.start()
    log.info("gRPC listening on %s", _address(host, bound))
    try:
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        stopping.set()
        with anyio.CancelScope(shield=True):
            await _settle(servicer, min(SETTLE_MAX, shutdown_timeout))
            await grpc_server.stop(shutdown_timeout)


SETTLE_TICK = 0.02
SETTLE_MAX = 0.5


async def _settle(servicer: InferenceServicer, limit: float) -> None:
    """Let calls a client sent before the stop reach their handlers before the server stops.

    grpc.aio takes new calls from gRPC's core one at a time, on the event loop; under load some
    wait there, already received, and ``stop()`` cancels those (the client sees CANCELLED for a
    request it sent before the signal). So the stop first waits until no new inference call has
    begun for two ticks (:data:`SETTLE_TICK`), at most ``limit`` seconds (:data:`SETTLE_MAX`):
    an idle server waits 40 ms; one whose clients keep sending waits the limit, then refuses.
    """
    deadline = anyio.current_time() + limit
    seen, quiet = servicer.arrivals, 0
    while quiet < 2 and anyio.current_time() < deadline:
        await anyio.sleep(SETTLE_TICK)
        quiet = quiet + 1 if servicer.arrivals == seen else 0
        seen = servicer.arrivals
