"""``backend: remote``: a model served by another KServe v2 server (dagserve, Triton, MLServer).

A remote model is a model like any other to the engine (it has inputs, outputs, statistics, a
scheduler) and a pipeline step like any other; its one instance forwards each request to one
of the configured endpoints and returns what that server answered.

Configuration (``remote:`` in config.yaml, or the same keys as Triton ``parameters``, the URLs
comma-separated): see :class:`~dagserve.repository.config.RemoteConfig`.

Contracts:

* **Load** reads the remote model's metadata (gRPC ``ModelMetadata`` or HTTP
  ``GET /v2/models/<m>``) from every endpoint it can reach and checks that each declared input
  and output exists there with the same datatype and a compatible shape; a mismatch fails the
  load with a ConfigError naming the file, the model, the tensor, what the config expects and
  what the remote has. An endpoint that cannot be reached does not fail the load: the model is
  loaded but not ready (its reason names the endpoints and why), and :meth:`RemoteInstance.watch`
  re-checks unreachable endpoints every ``health_interval_ms`` in the model's task group.
* **Requests** go round robin to the endpoints currently reachable. A failure before the
  request was sent (connection refused, connect timeout) marks that endpoint unreachable and
  tries the next one, up to ``retries`` more times; a failure after it was sent is never retried
  (the remote may have run it). The request id, the remaining deadline (as Triton's ``timeout``
  parameter, in µs, and as the call's own timeout) and a ``traceparent`` request parameter are
  forwarded. ``execute`` runs on the event loop in the caller's task (mode ``async``), so
  cancelling the caller cancels the remote call (the HTTP connection is closed; the gRPC call
  is cancelled), and the remote server cancels its request.
* **Errors**: unreachable → ModelNotReadyError (503 / UNAVAILABLE) naming the model and the
  endpoint; over ``timeout_ms`` or the request's deadline → TimeoutError (504 /
  DEADLINE_EXCEEDED); the remote's 4xx (or INVALID_ARGUMENT, NOT_FOUND) → InvalidInputError
  (400) with the remote's message; the remote's other failures → ModelExecutionError (500) with
  its message.

HTTP uses httpx (a runtime dependency: connection pooling with limits, keep-alive, and
cancellation through anyio); gRPC uses grpc.aio with dagserve's own generated protos.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np

from ..errors import (
    CancelledError,
    ConfigError,
    DagserveError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotReadyError,
    TimeoutError,
)
from ..repository.config import ModelConfig, RemoteConfig
from ..types import DataType, InferRequest, TensorSpec, bytes_array
from .base import ModelContext, Outputs

__all__ = ["RemoteInstance", "load", "remote_config"]

log = logging.getLogger("dagserve.backends")

_PARAMETER_KEYS = set(RemoteConfig.model_fields)


def remote_config(config: ModelConfig, owner: str) -> RemoteConfig:
    """The model's remote settings: its ``remote:`` section, else its ``parameters``.

    Raises:
        ConfigError: neither gives a ``url``, or a value is invalid (naming the field).
    """
    from pydantic import ValidationError

    if config.remote is not None:
        return config.remote
    data = {k: v for k, v in config.parameters.items() if k in _PARAMETER_KEYS}
    if "url" not in data:
        raise ConfigError(
            f"{owner}: backend remote needs a 'remote:' section with url (http://host:port or "
            "grpc://host:port) and model_name, or the same keys as parameters"
        )
    try:
        return RemoteConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"parameter {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{owner}: {problems}") from None


class _Unreachable(Exception):
    """The request was not sent: the endpoint could not be reached (safe to retry elsewhere)."""


@dataclass(eq=False)
class _Endpoint:
    url: str
    client: Any  # _HttpClient | _GrpcClient
    reason: str = "not checked yet"  # "" = reachable and its metadata matched

    @property
    def healthy(self) -> bool:
        return not self.reason


class RemoteInstance:
    """The instance of a remote model: its endpoints, their health, and the calls."""

    mode = "async"

    def __init__(self, context: ModelContext, settings: RemoteConfig) -> None:
        self._settings = settings
        self._run_sync = context.run_sync
        self._owner = f"remote model '{context.name}'"
        self._file = _config_file(context)
        self._remote_name = settings.model_name or context.name
        self._inputs = context.config.input_specs()
        self._outputs = context.config.output_specs()
        self._batching = context.config.batching
        self.concurrency = settings.max_connections
        self._endpoints = [_Endpoint(url, _client(url, settings)) for url in settings.url]
        self._next = 0
        self._mismatch = ""  # a metadata mismatch found after the load: never ready then
        self.round_trips: dict[str, dict[str, float]] = {
            e.url: {"count": 0, "ns": 0, "failures": 0} for e in self._endpoints
        }

    # -- health -----------------------------------------------------------------------------
    def not_ready_reason(self) -> str:
        """"" when an endpoint is reachable (and its metadata matched), else why not."""
        if self._mismatch:
            return self._mismatch
        if any(e.healthy for e in self._endpoints):
            return ""
        return f"{self._owner}: no endpoint is reachable: " + "; ".join(f"{e.url}: {e.reason}" for e in self._endpoints)

    async def check_all(self) -> None:
        """Check every endpoint now (the load does this once).

        Raises:
            ConfigError: a reachable remote's metadata disagrees with the config.
        """
        for endpoint in self._endpoints:
            await self._check(endpoint)

    async def watch(self) -> None:
        """Re-check unreachable endpoints every ``health_interval_ms``, until cancelled."""
        interval = self._settings.health_interval_ms / 1000
        while True:
            await anyio.sleep(interval)
            for endpoint in self._endpoints:
                if endpoint.healthy or self._mismatch:
                    continue
                try:
                    await self._check(endpoint)
                except ConfigError as exc:
                    self._mismatch = str(exc)
                    log.error("%s", exc)
                if endpoint.healthy:
                    log.info("%s: endpoint %s is reachable again", self._owner, endpoint.url)

    async def _check(self, endpoint: _Endpoint) -> None:
        connect = self._settings.connect_timeout_ms / 1000
        try:
            with anyio.fail_after(connect * 2):
                metadata = await endpoint.client.metadata(self._remote_name, self._settings.model_version, connect)
        except (_Unreachable, builtins.TimeoutError, DagserveError) as exc:
            endpoint.reason = str(exc) or "no answer within the connect timeout"
            return
        self._compare(endpoint.url, metadata)
        endpoint.reason = ""

    def _compare(self, url: str, metadata: Mapping[str, Any]) -> None:
        where = f"{self._file}: {self._owner} (remote '{self._remote_name}' at {url})"
        for kind, specs in (("input", self._inputs), ("output", self._outputs)):
            remote = {t["name"]: t for t in metadata.get(f"{kind}s", ())}
            for name, spec in specs.items():
                expected = f"{spec.datatype.value} {list(spec.full_shape(self._batching))}"
                found = remote.get(name)
                if found is None:
                    have = ", ".join(remote) or "none"
                    raise ConfigError(f"{where}: {kind} '{name}': expected {expected}, the remote has no such {kind} "
                                      f"(its {kind}s: {have})")
                shape = [int(d) for d in found.get("shape", ())]
                if found.get("datatype") != spec.datatype.value or not _shape_fits(spec, shape, self._batching):
                    raise ConfigError(f"{where}: {kind} '{name}': expected {expected}, remote has "
                                      f"{found.get('datatype')} {shape}")
            if kind == "input":
                extra = [n for n in remote if n not in specs]
                if extra:
                    raise ConfigError(f"{where}: the remote has input(s) {', '.join(extra)} that the config does "
                                      "not declare")

    # -- requests ---------------------------------------------------------------------------
    async def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Forward each request (those of a batch concurrently); one result or error per
        request, in order. Cancelling the caller cancels every call in flight."""
        results: list[Outputs | BaseException] = [ModelExecutionError(f"{self._owner}: no answer")] * len(requests)

        async def one(i: int, request: InferRequest) -> None:
            try:
                results[i] = await self._forward(request)
            except DagserveError as exc:
                results[i] = exc

        if len(requests) == 1:
            await one(0, requests[0])
            return results
        async with anyio.create_task_group() as tg:
            for i, request in enumerate(requests):
                tg.start_soon(one, i, request)
        return results

    async def _forward(self, request: InferRequest) -> Outputs:
        settings = self._settings
        deadline = anyio.current_effective_deadline()
        if settings.timeout_ms:
            deadline = min(deadline, anyio.current_time() + settings.timeout_ms / 1000)
        tried: list[str] = []
        for _ in range(settings.retries + 1):
            endpoint = self._pick()
            if endpoint is None:
                break
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise TimeoutError(f"{self._owner}: the request's deadline passed before it was sent")
            start = time.perf_counter_ns()
            stats = self.round_trips[endpoint.url]
            try:
                with anyio.fail_after(remaining if math.isfinite(remaining) else None):
                    outputs = await endpoint.client.infer(
                        self._remote_name, settings.model_version, request, self._wanted(request),
                        None if math.isinf(remaining) else remaining,
                    )
            except _Unreachable as exc:
                endpoint.reason = str(exc)
                stats["failures"] += 1
                tried.append(f"{endpoint.url} ({exc})")
                log.warning("%s: endpoint %s unreachable: %s", self._owner, endpoint.url, exc)
                continue
            except (builtins.TimeoutError, TimeoutError) as exc:
                stats["failures"] += 1
                if isinstance(exc, TimeoutError) and not _past(deadline):
                    raise TimeoutError(f"{self._owner}: {exc}") from None  # the remote's own 504
                limit = f"{settings.timeout_ms} ms" if settings.timeout_ms else "the request's deadline"
                raise TimeoutError(f"{self._owner}: {endpoint.url} did not answer within {limit}") from None
            except DagserveError as exc:
                stats["failures"] += 1
                raise type(exc)(f"{self._owner}: {exc}") from None
            stats["count"] += 1
            stats["ns"] += time.perf_counter_ns() - start
            return outputs
        if not tried:
            raise ModelNotReadyError(self.not_ready_reason() or f"{self._owner}: no endpoint is reachable")
        raise ModelNotReadyError(f"{self._owner}: endpoint unreachable: {'; '.join(tried)}")

    def _pick(self) -> _Endpoint | None:
        n = len(self._endpoints)
        for i in range(n):
            endpoint = self._endpoints[(self._next + i) % n]
            if endpoint.healthy:
                self._next = (self._next + i + 1) % n
                return endpoint
        return None

    def _wanted(self, request: InferRequest) -> tuple[str, ...]:
        return request.output_names() or tuple(self._outputs)

    def endpoint_statistics(self) -> dict[str, dict[str, float]]:
        """Round trips per endpoint: ``count`` (successes), ``ns`` (their total time), ``failures``."""
        return {url: dict(s) for url, s in self.round_trips.items()}

    def close(self) -> None:
        """Close every endpoint's connections (on the server's event loop; blocking)."""
        if self._run_sync is None:
            return
        try:
            self._run_sync(self._aclose)
        except Exception:  # the loop may be stopping; the connections die with it
            log.warning("%s: closing the connections failed", self._owner, exc_info=True)

    async def _aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for endpoint in self._endpoints:
                await endpoint.client.aclose()


def load(context: ModelContext) -> RemoteInstance:
    """Create the instance and check the remote's metadata (see the module's contract).

    Raises:
        ConfigError: bad settings, or a reachable remote whose metadata disagrees.
    """
    owner = f"remote model '{context.name}'"
    settings = remote_config(context.config, owner)
    if context.run_sync is None:
        raise ConfigError(f"{owner}: needs the server's event loop to load")
    instance = RemoteInstance(context, settings)
    try:
        context.run_sync(instance.check_all)
    except BaseException:
        instance.close()
        raise
    why = instance.not_ready_reason()
    if why:
        log.warning("%s is loaded but not ready: %s (re-checked every %d ms)", owner, why, settings.health_interval_ms)
    return instance


def _past(deadline: float) -> bool:
    return anyio.current_time() >= deadline - 0.001


def _config_file(context: ModelContext) -> str:
    for name in ("config.yaml", "config.yml", "config.pbtxt"):
        if (context.model_dir / name).is_file():
            return str(context.model_dir / name)
    return str(context.model_dir)


def _shape_fits(spec: TensorSpec, remote: list[int], batching: bool) -> bool:
    local = spec.full_shape(batching)
    if len(local) != len(remote):
        return False
    return all(r == -1 or r == d for d, r in zip(local, remote, strict=True))


def _client(url: str, settings: RemoteConfig) -> Any:
    scheme, _, rest = url.partition("://")
    target = rest.rstrip("/")
    return _HttpClient(f"http://{target}", settings) if scheme == "http" else _GrpcClient(target, settings)


# -- tensors on the wire -----------------------------------------------------------------------
def _raw(array: np.ndarray, datatype: DataType) -> bytes:
    if datatype is DataType.BYTES:
        parts = []
        for item in np.asarray(array, dtype=np.object_).reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def _from_raw(data: bytes | memoryview, datatype: DataType, shape: Sequence[int], name: str) -> np.ndarray:
    if datatype is DataType.BYTES:
        items: list[bytes] = []
        view, offset = memoryview(data), 0
        while offset < len(view):
            (size,) = struct.unpack_from("<I", view, offset)
            items.append(bytes(view[offset + 4:offset + 4 + size]))
            offset += 4 + size
        array = np.empty(len(items), dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    dtype = np.dtype(np.uint16) if datatype is DataType.BF16 else datatype.numpy_dtype
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError:
        raise ModelExecutionError(f"remote output '{name}': {len(data)} bytes do not make a {datatype.value} "
                                  f"tensor of shape {list(shape)}") from None


def _datatype(request: InferRequest, name: str) -> DataType:
    return request.datatype(name)


def _timeout_us(remaining: float | None) -> int | None:
    return None if remaining is None else max(1, int(remaining * 1e6))


# -- HTTP ------------------------------------------------------------------------------------
class _HttpClient:
    """KServe v2 over HTTP/1.1 (httpx, binary tensor extension by default)."""

    def __init__(self, base: str, settings: RemoteConfig) -> None:
        import httpx

        self._httpx = httpx
        self.base = base
        self._settings = settings
        limits = httpx.Limits(max_connections=settings.max_connections,
                              max_keepalive_connections=settings.max_connections)
        timeout = httpx.Timeout(None, connect=settings.connect_timeout_ms / 1000)
        self._client = httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout)

    def _path(self, model: str, version: str) -> str:
        return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")

    async def metadata(self, model: str, version: str, connect: float) -> dict[str, Any]:
        httpx = self._httpx
        try:
            ready = await self._client.get(self._path(model, version) + "/ready")
            if ready.status_code != 200:
                raise ModelNotReadyError(f"model '{model}' is not ready there (HTTP {ready.status_code})")
            reply = await self._client.get(self._path(model, version))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Unreachable(_describe(exc)) from None
        except httpx.TransportError as exc:
            raise ModelNotReadyError(_describe(exc)) from None
        if reply.status_code != 200:
            raise ModelNotReadyError(f"metadata of '{model}': HTTP {reply.status_code} {_message(reply.content)}")
        data: dict[str, Any] = reply.json()
        return data

    async def infer(
        self, model: str, version: str, request: InferRequest, wanted: tuple[str, ...], remaining: float | None
    ) -> Outputs:
        httpx = self._httpx
        binary = self._settings.binary
        inputs, blobs = [], []
        for name, array in request.inputs.items():
            datatype = _datatype(request, name)
            entry: dict[str, Any] = {"name": name, "datatype": datatype.value, "shape": list(array.shape)}
            if binary:
                blob = _raw(array, datatype)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = _json_data(array, datatype)
            inputs.append(entry)
        header: dict[str, Any] = {
            "inputs": inputs,
            "outputs": [{"name": n, "parameters": {"binary_data": binary}} for n in wanted],
        }
        if request.id:
            header["id"] = request.id
        parameters = _forwarded_parameters(request, remaining)
        if parameters:
            header["parameters"] = parameters
        head = json.dumps(header).encode()
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        if binary:
            headers["Inference-Header-Content-Length"] = str(len(head))
        traceparent = request.parameters.get("traceparent")
        if isinstance(traceparent, str):
            headers["traceparent"] = traceparent
        try:
            reply = await self._client.post(self._path(model, version) + "/infer",
                                            content=b"".join([head, *blobs]), headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Unreachable(_describe(exc)) from None
        except httpx.TransportError as exc:
            raise ModelNotReadyError(f"remote {self.base} failed during the call: {_describe(exc)}") from None
        body = reply.content
        if reply.status_code != 200:
            raise _http_error(reply.status_code, self.base, _message(body))
        size = reply.headers.get("inference-header-content-length")
        head_size = int(size) if size is not None else len(body)
        answer = json.loads(body[:head_size])
        offset = head_size
        outputs: dict[str, np.ndarray] = {}
        view = memoryview(body)
        for out in answer.get("outputs", ()):
            datatype = DataType.parse(out["datatype"])
            shape = out.get("shape", ())
            params = out.get("parameters") or {}
            if "binary_data_size" in params:
                n = int(params["binary_data_size"])
                outputs[out["name"]] = _from_raw(view[offset:offset + n], datatype, shape, out["name"])
                offset += n
            else:
                outputs[out["name"]] = _from_json(out.get("data", ()), datatype, shape)
        return outputs

    async def aclose(self) -> None:
        await self._client.aclose()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
    except ValueError:
        pass
    return body[:500].decode(errors="replace")


def _http_error(status: int, where: str, message: str) -> DagserveError:
    text = f"remote {where}: {message}"
    if status == 503:
        return ModelNotReadyError(text)
    if status == 504:
        return TimeoutError(text)
    if status == 499:
        return CancelledError(text)
    if 400 <= status < 500:
        return InvalidInputError(text)
    return ModelExecutionError(text)


def _json_data(array: np.ndarray, datatype: DataType) -> list[Any]:
    if datatype is DataType.BYTES:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    result: list[Any] = array.reshape(-1).tolist()
    return result


def _from_json(data: Any, datatype: DataType, shape: Sequence[int]) -> np.ndarray:
    if datatype is DataType.BYTES:
        return bytes_array(np.asarray(data, dtype=np.object_).reshape(shape))
    return np.asarray(data, dtype=datatype.numpy_dtype).reshape(shape)


def _forwarded_parameters(request: InferRequest, remaining: float | None) -> dict[str, Any]:
    """The request's parameters for the remote: the caller's own scalar ones (custom keys,
    ``priority``, ``timeout``, ``traceparent``...), with ``timeout`` replaced by the remaining
    deadline when there is one."""
    params: dict[str, Any] = {
        k: v for k, v in request.parameters.items() if isinstance(v, (str, int, float, bool))
    }
    timeout = _timeout_us(remaining)
    if timeout is not None:
        params["timeout"] = timeout
    return params


# -- gRPC ------------------------------------------------------------------------------------
class _GrpcClient:
    """KServe v2 over gRPC (grpc.aio, raw tensor contents)."""

    def __init__(self, target: str, settings: RemoteConfig) -> None:
        self.target = target
        self._settings = settings
        self._stub: Any = None
        self._channel: Any = None

    def _open(self) -> Any:
        if self._stub is None:
            import grpc

            from .._proto import grpc_service_pb2_grpc

            self._channel = grpc.aio.insecure_channel(self.target, options=[
                ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
            ])
            self._stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def _connected(self) -> None:
        """Wait until the channel is connected; raise _Unreachable when it cannot be."""
        import grpc

        self._open()
        state = self._channel.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return
        with anyio.move_on_after(self._settings.connect_timeout_ms / 1000):
            await _call(self._channel.channel_ready())
            return
        raise _Unreachable(f"cannot connect to grpc://{self.target} within {self._settings.connect_timeout_ms} ms")

    async def metadata(self, model: str, version: str, connect: float) -> dict[str, Any]:
        import grpc

        from .._proto import grpc_service_pb2 as pb

        await self._connected()
        try:
            ready = await _call(self._stub.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=connect))
            if not ready.ready:
                raise ModelNotReadyError(f"model '{model}' is not ready there")
            meta = await _call(self._stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version),
                                                        timeout=connect))
        except grpc.aio.AioRpcError as exc:
            raise ModelNotReadyError(f"{exc.code().name}: {exc.details()}") from None
        return {
            kind: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in getattr(meta, kind)]
            for kind in ("inputs", "outputs")
        }

    async def infer(
        self, model: str, version: str, request: InferRequest, wanted: tuple[str, ...], remaining: float | None
    ) -> Outputs:
        import grpc

        from .._proto import grpc_service_pb2 as pb

        await self._connected()
        message = pb.ModelInferRequest(model_name=model, model_version=version, id=request.id)
        for name, array in request.inputs.items():
            datatype = _datatype(request, name)
            tensor = message.inputs.add()
            tensor.name, tensor.datatype = name, datatype.value
            tensor.shape.extend(array.shape)
            message.raw_input_contents.append(_raw(array, datatype))
        for name in wanted:
            message.outputs.add().name = name
        for key, value in _forwarded_parameters(request, remaining).items():
            param = message.parameters[key]
            if isinstance(value, bool):
                param.bool_param = value
            elif isinstance(value, int):
                param.int64_param = value
            elif isinstance(value, float):
                param.double_param = value
            else:
                param.string_param = value
        metadata = []
        traceparent = request.parameters.get("traceparent")
        if isinstance(traceparent, str):
            metadata.append(("traceparent", traceparent))
        # The deadline is enforced by the caller's cancel scope; gRPC's own, a little later, only
        # tells the remote when to give up (grpc.aio reports its expiry as a bare cancellation).
        grpc_timeout = None if remaining is None else remaining + 1.0
        try:
            reply = await _call(self._stub.ModelInfer(message, timeout=grpc_timeout, metadata=metadata or None))
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED:
                # grpc.aio may report our own cancellation as a CANCELLED status: let the cancel
                # scope that did it see its cancellation, not an error.
                await anyio.lowlevel.checkpoint()
            raise _grpc_error(exc, self.target) from None
        outputs: dict[str, np.ndarray] = {}
        for i, out in enumerate(reply.outputs):
            datatype = DataType.parse(out.datatype)
            if i < len(reply.raw_output_contents):
                outputs[out.name] = _from_raw(reply.raw_output_contents[i], datatype, list(out.shape), out.name)
            else:
                raise ModelExecutionError(f"remote grpc://{self.target}: output '{out.name}' came without raw contents")
        return outputs

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()


async def _call(call: Any) -> Any:
    """Await a grpc.aio call (or coroutine); if the caller is cancelled, cancel the call (the
    remote stops too) and raise the caller's own cancellation: grpc.aio re-raises the one of
    its inner task, which anyio's cancel scopes do not recognise as theirs."""
    try:
        return await call
    except anyio.get_cancelled_exc_class():
        cancel = getattr(call, "cancel", None)
        if cancel is not None:
            cancel()
        await anyio.lowlevel.checkpoint()
        raise


def _grpc_error(exc: Any, target: str) -> DagserveError:
    import grpc

    code, text = exc.code(), f"remote grpc://{target}: {exc.details()}"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return InvalidInputError(text)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ModelNotReadyError(text)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError(text)
    if code is grpc.StatusCode.CANCELLED:
        return CancelledError(text)
    return ModelExecutionError(text)
