"""The wire side of ``backend: remote`` (:mod:`.remote`): one client per endpoint speaking
KServe v2 over HTTP (httpx; the binary tensor extension by default) or gRPC (grpc.aio with
dagserve's own generated protos; raw tensor contents).

Each client has ``metadata(model, version, connect_timeout)`` (the model's metadata once it is
ready there), ``infer(model, version, request, outputs, remaining)`` and ``aclose()``. Both
raise :class:`Unreachable` when the request could not be sent (safe to try elsewhere), and a
:class:`~dagserve.errors.DagserveError` for what the remote answered or a failure after
sending. Cancelling a call cancels it on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np

from .. import tensor_bytes
from ..errors import (
    DagserveError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotReadyError,
    RequestCancelledError,
    RequestTimeoutError,
)
from ..repository.config import RemoteConfig
from ..types import DataType, InferRequest, bytes_array
from .base import Outputs

__all__ = ["Unreachable", "client_for"]


class Unreachable(Exception):
    """The request was not sent: the endpoint could not be reached (safe to retry elsewhere)."""


def client_for(url: str, settings: RemoteConfig) -> Any:
    """The client for one ``http://`` or ``grpc://`` endpoint URL."""
    scheme, _, rest = url.partition("://")
    target = rest.rstrip("/")
    return _HttpClient(f"http://{target}", settings) if scheme == "http" else _GrpcClient(target, settings)


# -- tensors on the wire -----------------------------------------------------------------------
def _raw(array: np.ndarray, datatype: DataType, name: str) -> bytes:
    return bytes(tensor_bytes.encode(array, datatype, name=name, copy=True))


def _from_raw(data: bytes | memoryview, datatype: DataType, shape: Sequence[int], name: str) -> np.ndarray:
    """A remote output from its wire bytes; malformed data is the remote's failure (500)."""
    dims = tuple(int(d) for d in shape)
    count = 1
    for d in dims:
        count *= d
    try:
        return tensor_bytes.decode(data, datatype, dims, count, name=name)
    except InvalidInputError as exc:
        raise ModelExecutionError(f"remote output '{name}': {exc}") from None


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
            raise Unreachable(_describe(exc)) from None
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
                blob = _raw(array, datatype, name)
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
        traceparent = _traceparent(request)
        if traceparent is not None:
            headers["traceparent"] = traceparent
        try:
            reply = await self._client.post(self._path(model, version) + "/infer",
                                            content=b"".join([head, *blobs]), headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(_describe(exc)) from None
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
        return RequestTimeoutError(text)
    if status == 499:
        return RequestCancelledError(text)
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
        """Wait until the channel is connected; raise Unreachable when it cannot be."""
        import grpc

        self._open()
        state = self._channel.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return
        with anyio.move_on_after(self._settings.connect_timeout_ms / 1000):
            await _call(self._channel.channel_ready())
            return
        raise Unreachable(f"cannot connect to grpc://{self.target} within {self._settings.connect_timeout_ms} ms")

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
            message.raw_input_contents.append(_raw(array, datatype, name))
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
        traceparent = _traceparent(request)
        if traceparent is not None:
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
        return RequestTimeoutError(text)
    if code is grpc.StatusCode.CANCELLED:
        return RequestCancelledError(text)
    return ModelExecutionError(text)


def _traceparent(request: InferRequest) -> str | None:
    """The W3C ``traceparent`` to send with the call: the span of this model call when the
    request is traced by dagserve (so the remote server's spans continue the trace), else a
    ``traceparent`` request parameter the caller set."""
    if request.trace is not None:
        traceparent: object = request.trace.traceparent()
        if isinstance(traceparent, str):
            return traceparent
    traceparent = request.parameters.get("traceparent")
    return traceparent if isinstance(traceparent, str) else None
