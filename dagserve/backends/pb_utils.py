"""``triton_python_backend_utils`` for models written for Triton's Python backend.

The Python backend registers this module under that name in ``sys.modules`` before it imports a
model, so ``import triton_python_backend_utils as pb_utils`` in an unmodified ``model.py`` finds
it. It is a thin layer over dagserve's own objects: tensors are numpy arrays, and BLS calls
(``InferenceRequest(...).exec()`` / ``await ....async_exec()``) go straight to the server in
process through the :class:`~dagserve.backends.base.ModelContext` of the calling model — no stub
process, no shared memory.
"""

from __future__ import annotations

import contextvars
import enum
import json
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio.from_thread
import anyio.lowlevel
import numpy as np

from .. import errors, tensor_bytes
from ..custom_metrics import CustomMetricError as _CustomMetricError
from ..custom_metrics import MetricKind as _MetricKind
from ..types import DataType, RequestedOutput, ResponseSender, datatype_of, is_device_tensor, to_host
from ..types import InferRequest as _EngineRequest
from ..types import InferResponse as _EngineResponse
from .base import ModelContext

# Flags, with Triton's values.
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2

current_context: contextvars.ContextVar[ModelContext | None] = contextvars.ContextVar(
    "dagserve_pb_utils_context", default=None
)
"""The model whose ``execute`` is running: BLS requests are sent on its behalf."""


class TritonError(Exception):
    """An error with a Triton error code, returned in an :class:`InferenceResponse`."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        super().__init__(message)
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    """Raised by BLS helpers; a model may also raise it from ``execute``."""


_CODE_TO_ERROR: dict[int, type[errors.DagserveError]] = {
    TritonError.NOT_FOUND: errors.ModelNotFoundError,
    TritonError.INVALID_ARG: errors.InvalidInputError,
    TritonError.UNAVAILABLE: errors.ModelNotReadyError,
    TritonError.UNSUPPORTED: errors.UnsupportedError,
    TritonError.ALREADY_EXISTS: errors.AlreadyExistsError,
    TritonError.CANCELLED: errors.RequestCancelledError,
}
_ERROR_TO_CODE = {v: k for k, v in _CODE_TO_ERROR.items()}


def to_dagserve_error(error: TritonError) -> errors.DagserveError:
    """The dagserve error a model's ``TritonError`` becomes (its message shown as is)."""
    cls = _CODE_TO_ERROR.get(error.code(), errors.ModelExecutionError)
    return cls(error.message())


class Tensor:
    """A named tensor over a numpy array (BYTES tensors are object arrays of ``bytes``)."""

    __slots__ = ("_array", "_datatype", "_name")

    def __init__(self, name: str, array: Any, datatype: DataType | None = None) -> None:
        if not isinstance(array, np.ndarray) and not is_device_tensor(array):
            array = to_host(array)
        if isinstance(array, np.ndarray) and array.dtype.kind in "SU":
            array = array.astype(np.object_)
        self._name = name
        self._array = array
        self._datatype = datatype

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        # A GPU tensor comes to host here (Triton's as_numpy works on CPU tensors only).
        # Inputs are read-only views over the request body; Triton models may write into the
        # array they get, so they get a private copy of a read-only one (once).
        if not isinstance(self._array, np.ndarray):
            self._array = to_host(self._array)
        if not self._array.flags.writeable:
            self._array = self._array.copy()
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return _TRITON_DTYPE_CODES[self.datatype()]

    def datatype(self) -> DataType:
        return self._datatype or datatype_of(self._array)

    def is_cpu(self) -> bool:
        return not is_device_tensor(self._array)

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._array.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._array.__dlpack_device__()

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> Tensor:
        # A torch/cupy tensor on the GPU stays there; anything else becomes numpy.
        if hasattr(capsule, "__dlpack_device__") and capsule.__dlpack_device__()[0] != 1:
            return cls(name, capsule)  # type: ignore[arg-type]
        return cls(name, np.from_dlpack(capsule))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


class InferenceResponse:
    """A model's answer to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] = (),
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors)
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceRequest:
    """A request: either one a model's ``execute`` received, or a BLS request it builds.

    As a BLS request, ``exec()`` blocks until the called model (or pipeline) answers and
    ``await async_exec()`` does the same without blocking; errors come back in the response
    (``has_error()``), as on Triton.
    """

    def __init__(
        self,
        model_name: str = "",
        requested_output_names: Sequence[str] = (),
        inputs: Sequence[Tensor] = (),
        request_id: str = "",
        correlation_id: int | str = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        trace: Any = None,
        parameters: dict[str, Any] | str | None = None,
        *,
        _engine_request: _EngineRequest | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self._inputs = list(inputs)
        self._requested = list(requested_output_names)
        self._id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        self._parameters: Mapping[str, Any] = dict(parameters or {})
        self._engine_request = _engine_request

    @classmethod
    def _received(cls, request: _EngineRequest) -> InferenceRequest:
        """Wrap a request the engine delivers to a model's ``execute``.

        Built field by field, not through ``__init__``: this runs for every request of every
        Triton-form model (every pipeline hop), and the BLS constructor's conversions are moot.
        """
        self = cls.__new__(cls)
        datatypes = request.datatypes
        self._inputs = [Tensor(n, a, datatypes.get(n) if datatypes else None) for n, a in request.inputs.items()]
        self.model_name = ""
        self.model_version = -1
        self._requested = list(request.output_names() or ())
        self._id = request.id
        params = request.parameters
        if params:
            self._correlation_id = params.get("sequence_id", 0)
            self._flags = (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if params.get("sequence_start") else 0) | (
                TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if params.get("sequence_end") else 0
            )
        else:
            self._correlation_id = 0
            self._flags = 0
        self._timeout = 0
        self._parameters = params  # read-only here: parameters() serializes a copy
        self._engine_request = request
        return self

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        """The request's own parameters as JSON text, as Triton's Python backend gives them:
        the ones Triton reserves for itself (``sequence_id``, ``priority``, ``timeout``,
        ``binary_data_output``, ``triton_*``, ...) are left out, as Triton keeps them out of
        the C API; string, int, bool and float values keep their types."""
        return json.dumps(user_parameters(self._parameters))

    def requested_output_names(self) -> list[str]:
        return self._requested

    def is_cancelled(self) -> bool:
        sender = self._engine_request.sender if self._engine_request else None
        return sender.is_cancelled() if sender is not None else False

    def get_response_sender(self) -> InferenceResponseSender:
        """The sender of a decoupled model's responses to this request.

        Raises:
            TritonModelException: the model is not decoupled.
        """
        sender = self._engine_request.sender if self._engine_request else None
        if sender is None:
            raise TritonModelException(
                "get_response_sender() needs model_transaction_policy { decoupled: true } in the config"
            )
        return InferenceResponseSender(sender)

    def trace(self) -> None:
        return None

    # -- BLS ---------------------------------------------------------------------------------
    def _to_engine(self) -> tuple[str, str, _EngineRequest]:
        version = "" if self.model_version in (-1, None) else str(self.model_version)
        params = dict(self._parameters)
        if self._timeout:
            params.setdefault("timeout", self._timeout)
        request = _EngineRequest(
            inputs={t.name(): t.as_numpy() for t in self._inputs},
            datatypes={t.name(): t.datatype() for t in self._inputs if t._datatype is not None},
            id=self._id,
            parameters=params,
            outputs=tuple(RequestedOutput(name=n) for n in self._requested) or None,
        )
        return self.model_name, version, request

    def exec(self, decoupled: bool = False) -> Any:
        """Send the request and block until it is answered.

        Returns an :class:`InferenceResponse`, or with ``decoupled=True`` a
        :class:`ResponseIterator` over every response of the called (decoupled) model.
        Errors come back as responses with ``has_error()``, never raised.
        """
        ctx = _bls_context()
        if ctx.run_sync is None:
            raise TritonModelException("BLS exec() is not available here")
        if decoupled:
            return _LiveResponseIterator(self, ctx)
        return ctx.run_sync(self._call, ctx)

    async def async_exec(self, decoupled: bool = False) -> Any:
        """:meth:`exec` without blocking the event loop (from an ``async def execute``)."""
        ctx = _bls_context()
        if decoupled:
            responses: list[InferenceResponse] = []
            await self._call_stream(ctx, responses.append)
            return ResponseIterator(responses)
        return await self._call(ctx)

    async def _call_stream(self, ctx: ModelContext, deliver: Callable[[InferenceResponse], None]) -> None:
        """Stream the request's responses into ``deliver``, an error as a last error response.
        ``deliver`` may raise :class:`_StopStream` to cancel the request."""
        if ctx.infer_stream is None:
            raise TritonModelException("BLS with decoupled=True is not available here")
        name, version, request = self._to_engine()

        async def emit(response: _EngineResponse) -> None:
            tensors = [Tensor(n, a, response.datatypes.get(n)) for n, a in response.outputs.items()]
            deliver(InferenceResponse(tensors, parameters=dict(response.parameters)))

        try:
            await ctx.infer_stream(name, version, request, emit)
        except _StopStream:
            pass
        except errors.DagserveError as exc:
            deliver(_error_response(exc))

    async def _call(self, ctx: ModelContext) -> InferenceResponse:
        assert ctx.infer is not None
        name, version, request = self._to_engine()
        try:
            response = await ctx.infer(name, version, request)
        except errors.DagserveError as exc:
            return _error_response(exc)
        tensors = [Tensor(n, a, response.datatypes.get(n)) for n, a in response.outputs.items()]
        return InferenceResponse(tensors, parameters=dict(response.parameters))


RESERVED_PARAMETERS = frozenset({
    "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers", "binary_data_output",
})
"""Request parameters Triton consumes itself; its backends never see them."""


def user_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` without the ones Triton reserves (see :data:`RESERVED_PARAMETERS`),
    bytes values as text."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in RESERVED_PARAMETERS or key.startswith("triton_"):
            continue
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return out


class ResponseIterator:
    """The responses of a BLS request sent with ``decoupled=True``, in order: each response
    the called model sent, the last one marked final by the model (it may have no outputs);
    an error from the called model arrives as a response whose ``has_error()`` is true.

    From ``await async_exec(decoupled=True)`` the responses are all in when the iterator is
    returned (iterating must not block the event loop the called model runs on), so
    ``cancel()`` has nothing left to stop; ``exec(decoupled=True)`` streams them
    (:class:`_LiveResponseIterator`).
    """

    def __init__(self, responses: list[InferenceResponse]) -> None:
        self._responses = responses
        self._index = 0

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        if self._index >= len(self._responses):
            raise StopIteration
        self._index += 1
        return self._responses[self._index - 1]

    def cancel(self) -> None:
        """Triton's cancel(): a no-op here, as every response has already arrived."""


class _StopStream(Exception):
    """Raised into a decoupled BLS stream whose iterator was cancelled."""


_END = object()


class _LiveResponseIterator(ResponseIterator):
    """The iterator of a blocking ``exec(decoupled=True)``: each response is yielded as the
    called model sends it. A pump thread runs the request on the event loop and hands the
    responses over through a queue; ``cancel()`` stops the request (the called model's
    sender reports ``is_cancelled()``) and ends the iteration."""

    def __init__(self, request: InferenceRequest, ctx: ModelContext) -> None:
        super().__init__([])
        assert ctx.run_sync is not None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = False
        token = ctx.run_sync(_loop_token)  # from the model's worker thread, the loop we run on
        self._pump = threading.Thread(
            target=self._run, args=(request, ctx, token), name="dagserve-bls-stream", daemon=True
        )
        self._pump.start()

    def _run(self, request: InferenceRequest, ctx: ModelContext, token: Any) -> None:
        try:
            anyio.from_thread.run(request._call_stream, ctx, self._deliver, token=token)
        except BaseException as exc:  # noqa: BLE001 - the loop is gone (server stopping), or a bug
            self._queue.put(InferenceResponse(error=TritonError(f"BLS stream failed: {exc}")))
        finally:
            self._queue.put(_END)

    def _deliver(self, response: InferenceResponse) -> None:
        if self._cancelled:
            raise _StopStream
        self._queue.put(response)

    def __next__(self) -> InferenceResponse:
        if self._cancelled:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._cancelled = True  # nothing more will come
            raise StopIteration
        return item  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Stop the request: no more responses are delivered, and the called model sees
        ``is_cancelled()`` on its sender when it sends its next one."""
        self._cancelled = True


async def _loop_token() -> Any:
    return anyio.lowlevel.current_token()


class InferenceResponseSender:
    """Sends a decoupled model's responses to one request, from any thread."""

    def __init__(self, sender: ResponseSender) -> None:
        self._sender = sender

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is None:
            if not final:
                raise TritonModelException("send() without a response must set TRITONSERVER_RESPONSE_COMPLETE_FINAL")
            self._sender.send(None, final=True)
        elif response.has_error():
            self._sender.send(to_dagserve_error(response.error()), final=True)  # type: ignore[arg-type]
        else:
            self._sender.send({t.name(): t.as_numpy() for t in response.output_tensors()}, final=final)

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()


def _error_response(exc: errors.DagserveError) -> InferenceResponse:
    """A BLS response carrying the called model's error: its message unchanged, its code."""
    code = _ERROR_TO_CODE.get(type(exc), TritonError.INTERNAL)
    return InferenceResponse(error=TritonError(str(exc), code))


def _bls_context() -> ModelContext:
    ctx = current_context.get()
    if ctx is None or ctx.infer is None:
        raise TritonModelException("BLS requests can only be sent from inside a model's execute()")
    return ctx


# -- model control (Triton's "model loading API") -------------------------------------------
def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) ``model_name`` from the repository and return once it is ready, as
    Triton's ``pb_utils.load_model``: ``config`` is a JSON model config replacing the one on
    disk; ``files`` maps ``"file:<path>"`` to bytes and, with ``config``, makes the model
    directory. Needs ``--model-control-mode explicit``.

    Raises:
        TritonModelException: ``Failed to load model: <why>`` (another control mode, the
            model failed to load, bad arguments...), or called from the event loop.
    """
    if files is not None and not isinstance(files, dict):
        raise TritonModelException(
            f"failed to load model '{model_name}', files should be a dictionary of file paths and file contents"
        )
    parameters: dict[str, Any] = {"config": config} if config else {}
    for path, content in (files or {}).items():
        if not isinstance(content, bytes):
            raise TritonModelException(f"failed to load model '{model_name}', the content of {path!r} must be bytes")
        parameters[path] = content
    ctx = _control_context("load_model")
    assert ctx.control is not None and ctx.run_sync is not None
    try:
        ctx.run_sync(ctx.control.load_model, model_name, parameters or None)
    except errors.DagserveError as exc:
        raise TritonModelException(f"Failed to load model: {exc}") from None


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload ``model_name`` (and, with ``unload_dependents``, the models it alone calls),
    returning once its requests in flight are done, as Triton's ``pb_utils.unload_model``.
    Needs ``--model-control-mode explicit``.

    Raises:
        TritonModelException: ``Failed to unload model: <why>``, or called from the event loop.
    """
    ctx = _control_context("unload_model")
    assert ctx.control is not None and ctx.run_sync is not None
    try:
        ctx.run_sync(ctx.control.unload_model, model_name, unload_dependents)
    except errors.DagserveError as exc:
        raise TritonModelException(f"Failed to unload model: {exc}") from None


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether ``model_name`` (version ``model_version``; "" = the server's choice) is ready;
    False for a model the server does not serve, as Triton's ``pb_utils.is_model_ready``.
    Works in every model control mode.

    Raises:
        TritonModelException: ``model_version`` is not an integer >= 0.
    """
    if model_version:
        try:
            number = int(model_version)
        except ValueError:
            number = -1
        if number < 0:
            raise TritonModelException(
                f"failed to get model version from specified version string '{model_version}', "
                "version should be an integral value > 0"
            )
    ctx = current_context.get()
    if ctx is None or ctx.control is None:
        raise TritonModelException("pb_utils.is_model_ready() can only be called from a model the server loaded")
    try:
        return ctx.control.model_ready(model_name, model_version)
    except errors.DagserveError:
        return False  # unknown model or version: not ready, as Triton answers


def _control_context(function: str) -> ModelContext:
    ctx = current_context.get()
    if ctx is None or ctx.control is None or ctx.run_sync is None:
        raise TritonModelException(
            f"pb_utils.{function}() can only be called from a model the server loaded "
            "(initialize() or execute(); not with execution: process)"
        )
    try:
        anyio.lowlevel.current_token()
    except RuntimeError:
        return ctx  # a worker thread: it may block until the server is done
    raise TritonModelException(
        f"pb_utils.{function}() blocks until the server is done, so it cannot run on the event loop "
        "(async def execute, or execution: inline); call it from a sync execute() or initialize()"
    )


# -- helpers with Triton's names ------------------------------------------------------------
def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for t in request.inputs():
        if t.name() == name:
            return t
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for t in response.output_tensors():
        if t.name() == name:
            return t
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for t in model_config.get("input", ()):
        if t["name"] == name:
            return dict(t)
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for t in model_config.get("output", ()):
        if t["name"] == name:
            return dict(t)
    return None


def triton_string_to_numpy(triton_type: str) -> type:
    """The numpy type for a config type name, e.g. ``TYPE_FP32`` -> ``numpy.float32``."""
    return DataType.parse(triton_type).numpy_dtype.type


_TRITON_DTYPE_CODES = {
    DataType.BOOL: 1, DataType.UINT8: 2, DataType.UINT16: 3, DataType.UINT32: 4,
    DataType.UINT64: 5, DataType.INT8: 6, DataType.INT16: 7, DataType.INT32: 8,
    DataType.INT64: 9, DataType.FP16: 10, DataType.FP32: 11, DataType.FP64: 12,
    DataType.BYTES: 13, DataType.BF16: 14,
}
_CODE_TO_DTYPE = {v: k for k, v in _TRITON_DTYPE_CODES.items()}


def numpy_to_triton_type(dtype: Any) -> int | None:
    try:
        return _TRITON_DTYPE_CODES[DataType.from_numpy(np.dtype(dtype))]
    except (ValueError, TypeError):
        return None


def triton_to_numpy_type(code: int) -> type | None:
    datatype = _CODE_TO_DTYPE.get(code)
    return None if datatype is None else datatype.numpy_dtype.type


def serialize_byte_tensor(array: np.ndarray) -> np.ndarray:
    """Length-prefix each element (4-byte little-endian), as Triton lays out BYTES tensors:
    a 0-d object array holding the bytes (see :mod:`dagserve.tensor_bytes`)."""
    if array.size == 0:
        return np.empty([0], dtype=np.object_)
    return np.asarray(tensor_bytes.encode_bytes(array), dtype=np.object_)


def deserialize_bytes_tensor(encoded: bytes) -> np.ndarray:
    """The inverse of :func:`serialize_byte_tensor`: a flat object array of ``bytes``.

    Raises:
        dagserve.errors.InvalidInputError: ``encoded`` is truncated.
    """
    return tensor_bytes.decode_bytes(encoded, name="serialized BYTES tensor")


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class _LogLevel(enum.IntEnum):
    """``pb_utils.Logger.LogLevel``, with Triton's values."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_PYTHON_LEVELS = {_LogLevel.INFO: logging.INFO, _LogLevel.WARNING: logging.WARNING,
                  _LogLevel.ERROR: logging.ERROR, _LogLevel.VERBOSE: logging.DEBUG}


class Logger:
    """Model logging into the server's log, with Triton's method names; each line names the
    model file and line that logged (``stacklevel``). VERBOSE is verbose level 1 (written
    with ``--log-verbose 1`` or ``log_verbose_level`` >= 1)."""

    LogLevel = _LogLevel
    INFO, WARNING, ERROR, VERBOSE = _LogLevel.INFO, _LogLevel.WARNING, _LogLevel.ERROR, _LogLevel.VERBOSE
    _log = logging.getLogger("dagserve.model")

    @classmethod
    def log_info(cls, message: str) -> None:
        cls._log.info(message, stacklevel=2)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls._log.warning(message, stacklevel=2)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls._log.error(message, stacklevel=2)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls._log.debug(message, stacklevel=2)

    @classmethod
    def log(cls, message: str, level: int = _LogLevel.INFO) -> None:
        cls._log.log(_PYTHON_LEVELS.get(_LogLevel(level), logging.INFO), message, stacklevel=2)


class MetricFamily:
    """A family of the model's own metrics on the server's ``/metrics``, as Triton's Python
    backend defines it: ``MetricFamily(name, description, kind)`` with ``kind`` one of
    :attr:`COUNTER`, :attr:`GAUGE`, :attr:`HISTOGRAM`; :meth:`Metric` makes one labelled
    metric of it. Create it in ``initialize`` or ``execute`` (or a native model's constructor
    or ``infer``). The rules and errors (:class:`TritonModelException`) are Triton's; see
    :mod:`dagserve.custom_metrics`.
    """

    COUNTER = _MetricKind.COUNTER
    GAUGE = _MetricKind.GAUGE
    HISTOGRAM = _MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: _MetricKind) -> None:
        ctx = current_context.get()
        registry = ctx.metrics if ctx is not None else None
        if registry is None:
            raise TritonModelException(
                "Error when creating MetricFamily: custom metrics can be created only while the server runs "
                "the model's code (initialize, execute; not at import time, nor with 'execution: process')"
            )
        owner = id(ctx)
        try:
            handle = registry.family(name, description, kind, owner=owner)
        except _CustomMetricError as exc:
            raise TritonModelException(f"Error when creating MetricFamily: {exc}") from None
        self._registry = registry
        self._owner = owner
        self._handle = handle
        self._children: weakref.WeakSet[Metric] = weakref.WeakSet()
        weakref.finalize(self, _release_family, registry, handle, owner, self._children)

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        """The metric of this family with ``labels``; ``buckets`` (upper bounds, increasing)
        for a HISTOGRAM family only, where they are required."""
        try:
            handle = self._registry.metric(self._handle, labels, buckets, owner=self._owner)
        except _CustomMetricError as exc:
            raise TritonModelException(str(exc)) from None
        metric = Metric(self._registry, handle, self._owner)
        self._children.add(metric)
        return metric


def _release_family(registry: Any, handle: Any, owner: int, children: weakref.WeakSet[Metric]) -> None:
    # Triton clears a family's metrics when the family object goes: later operations on them fail.
    for metric in list(children):
        registry.forget(metric._handle, owner)
    registry.forget(handle, owner)


class Metric:
    """One labelled metric of a :class:`MetricFamily` (made by ``family.Metric(labels)``)."""

    def __init__(self, registry: Any, handle: Any, owner: int) -> None:
        self._registry = registry
        self._handle = handle
        weakref.finalize(self, registry.forget, handle, owner)

    def increment(self, value: float) -> None:
        """Add ``value`` (a COUNTER only by a non-negative value; a GAUGE by any)."""
        self._call(self._registry.increment, value)

    def set(self, value: float) -> None:
        """Set a GAUGE to ``value``."""
        self._call(self._registry.set, value)

    def observe(self, value: float) -> None:
        """Count ``value`` in a HISTOGRAM."""
        self._call(self._registry.observe, value)

    def value(self) -> float:
        """The value of a COUNTER or GAUGE."""
        try:
            return float(self._registry.value(self._handle))
        except _CustomMetricError as exc:
            raise TritonModelException(str(exc)) from None

    def _call(self, operation: Callable[[Any, float], None], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"a metric value must be a number, not {type(value).__name__}")
        try:
            operation(self._handle, float(value))
        except _CustomMetricError as exc:
            raise TritonModelException(str(exc)) from None


class ModelConfig:
    """The config handed to ``auto_complete_config``, with Triton's methods and checks.

    ``as_dict()`` is the config in Triton's JSON shape; the setters refuse what Triton's
    refuse (a smaller ``max_batch_size`` than the config's, dynamic batching on a sequence
    model, an input or output that contradicts the config, changing ``decoupled``), with
    Triton's ValueError messages.
    """

    def __init__(self, config: dict[str, Any] | str) -> None:
        self._config: dict[str, Any] = json.loads(config) if isinstance(config, str) else config
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])
        self._config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._config["max_batch_size"] > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {self._config['max_batch_size']}, but in "
                f"auto-complete-config function for model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{scheduler}', but auto-complete-config "
                    f"function for model '{self._name()}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, policy: dict[str, Any]) -> None:
        for key in policy:
            if key != "decoupled":
                raise ValueError(
                    f"model transaction property in auto-complete-config function for model '{self._name()}' "
                    "contains property other than 'decoupled'."
                )
        current = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in policy:
            if "decoupled" in current and current["decoupled"] != policy["decoupled"]:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model '{self._name()}', "
                    f"which is already set to '{current['decoupled']}'."
                )
            current["decoupled"] = policy["decoupled"]

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        label = tensor.get("name", "")
        for key in tensor:
            if key not in allowed:
                names = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" and '{allowed[-1]}'"
                raise ValueError(
                    f"{kind} '{label}' in auto-complete-config function for model '{self._name()}' "
                    f"contains property other than {names}."
                )
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                where = f"{kind} '{label}'" if key != "name" else kind
                raise ValueError(
                    f"{where} in auto-complete-config function for model '{self._name()}' is missing '{key}' property."
                )
        for current in self._config[kind]:
            if current["name"] != tensor["name"]:
                continue
            if current.get("data_type", "TYPE_INVALID") not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(
                    f"unable to load model '{self._name()}', configuration expects datatype "
                    f"{current['data_type']} for {kind} '{tensor['name']}', model provides {tensor['data_type']}"
                )
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(
                    f"model '{self._name()}', tensor '{tensor['name']}': the model expects dims "
                    f"{list(tensor['dims'])} but the model configuration specifies dims {list(current['dims'])}"
                )
            current["data_type"] = tensor["data_type"]
            current["dims"] = list(tensor["dims"])
            if "optional" in tensor:
                current["optional"] = tensor["optional"]
            return
        self._config[kind].append(dict(tensor))
