"""The KServe v2 HTTP tensor codec: JSON and the binary tensor data extension.

Decoding turns a request body (a JSON header, optionally followed by raw tensor bytes as the
``Inference-Header-Content-Length`` extension describes) into an :class:`InferRequest`;
encoding turns an :class:`InferResponse` into a body the same way. No HTTP framework is
imported here, so the codec is tested and reused (e.g. by the remote backend) without a server.

Wire facts this module follows (Triton's ``http_server.cc`` and ``tritonclient.http``):

* binary inputs carry ``parameters.binary_data_size`` and their bytes follow the JSON header in
  input order; BYTES elements are a 4-byte little-endian length then the bytes; BOOL is one byte;
* JSON ``data`` is a flat or nested row-major list; FP16/BF16 have no JSON form on input;
* an output is binary when its requested ``parameters.binary_data`` is true, or, absent that,
  when the request's ``parameters.binary_data_output`` is true; a binary output gets
  ``parameters.binary_data_size`` instead of ``data`` and the body gains the binary section.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Container, Mapping
from typing import Any

import numpy as np

from .. import tensor_bytes
from ..errors import InvalidInputError, UnsupportedError
from ..limits import DEFAULT_LIMITS, Limits
from ..shared_memory import SharedMemoryRegistry, tensor_ref
from ..types import DataType, InferRequest, InferResponse, RequestedOutput, check_shape, to_host

__all__ = [
    "BodyTooLargeError",
    "decode_infer_request",
    "decode_raw_request",
    "decompress_body",
    "encode_infer_response",
]

# Keyed by wire name: the decoder looks types up by the string it parsed, and hashing a str
# is cheaper than hashing an Enum member (a Python-level __hash__).
_BY_NAME: dict[str, DataType] = {dt.value: dt for dt in DataType}
_INT_LIMITS: dict[DataType, tuple[int, int]] = {
    dt: (int(np.iinfo(dt.numpy_dtype).min), int(np.iinfo(dt.numpy_dtype).max))
    for dt in DataType
    if dt.numpy_dtype.kind in "iu" and dt is not DataType.BF16
}
_FLOAT_TYPES = frozenset({DataType.FP32, DataType.FP64})
_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_NO_PARAMETERS: Mapping[str, Any] = {}  # shared, never mutated


class BodyTooLargeError(Exception):
    """A request body (as sent, or once decompressed) is larger than the server accepts.

    Transport-level, not a :class:`~dagserve.errors.DagserveError`: the HTTP frontend answers
    it with 413 and closes the connection.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the server's limit of {limit} bytes")
        self.limit = limit


# --------------------------------------------------------------------------- request side


def decompress_body(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo a request ``Content-Encoding`` (``gzip``, ``deflate`` or ``identity``).

    Decompression stops once more than ``limit`` bytes come out, so a small compressed body
    cannot expand into a huge allocation.

    Raises:
        BodyTooLargeError: the decompressed body exceeds ``limit``.
        InvalidInputError: the body is not valid for its encoding.
        UnsupportedError: an encoding other than those three.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits_options: tuple[int, ...] = (31,)
    elif encoding == "deflate":
        # HTTP's "deflate" is the zlib format (what tritonclient sends); some clients send a
        # bare deflate stream, so that is tried second.
        wbits_options = (15, -15)
    else:
        raise UnsupportedError(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    last_error: zlib.error | None = None
    for wbits in wbits_options:
        decompressor = zlib.decompressobj(wbits=wbits)
        try:
            out = decompressor.decompress(body, limit + 1)
        except zlib.error as exc:
            last_error = exc
            continue
        if len(out) > limit or decompressor.unconsumed_tail:
            raise BodyTooLargeError(limit)
        if not decompressor.eof:
            raise InvalidInputError(f"request body is a truncated {encoding} stream")
        return out
    raise InvalidInputError(f"request body is not valid {encoding} data: {last_error}")


def decode_infer_request(
    header: bytes,
    binary: memoryview,
    limits: Limits = DEFAULT_LIMITS,
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """Decode an inference request from its JSON ``header`` and the ``binary`` bytes after it.

    Every input array is read-only: binary inputs are views into ``binary`` (no copy); JSON
    inputs are built from their ``data`` only after the element count is checked against the
    shape, so a forged shape never causes a large allocation. An input naming a
    ``shared_memory_region`` is read from ``shared_memory`` (a view of the region); requested
    outputs keep their shared-memory parameters for the frontend to resolve
    (:meth:`SharedMemoryRegistry.output_targets`).

    Raises:
        InvalidInputError: malformed JSON, wrong field types, counts or sizes that don't add up,
            or over one of ``limits`` (checked before parsing or allocating); the message names
            the field or input at fault.
        UnsupportedError: the request uses shared memory and no ``shared_memory`` is given, or
            client shared memory is not allowed.
        RegionNotFoundError: an input names a region that is not registered.
    """
    limits.check_json(header, "inference request")  # security: limits before allocation
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidInputError(f"malformed JSON in inference request: {exc}") from None
    if type(doc) is not dict:
        raise InvalidInputError("inference request must be a JSON object")

    request_id = doc.get("id", "")
    if type(request_id) is not str:
        raise InvalidInputError("inference request 'id' must be a string")
    parameters = _parameters(doc.get("parameters"), "inference request")
    for key, value in parameters.items():
        if key.startswith("triton_"):
            raise InvalidInputError(TRITON_RESERVED)
        if type(value) is dict or type(value) is list or value is None:
            # Triton's words: a request parameter is a scalar (its C API has no other kind).
            raise InvalidInputError(
                f"parameter '{key}' has invalid type. It should be either 'int', 'bool', 'float', or 'string'."
            )
    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list:
        raise InvalidInputError("inference request must have an 'inputs' list")
    limits.check_inputs(len(raw_inputs))

    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, DataType] = {}
    offset = 0
    for position, raw in enumerate(raw_inputs):
        if type(raw) is not dict:
            raise InvalidInputError(f"inference request input #{position} must be a JSON object")
        name = raw.get("name")
        if type(name) is not str:
            raise InvalidInputError(f"inference request input #{position} must have a string 'name'")
        if name in inputs:
            raise InvalidInputError(f"input '{name}' appears more than once")
        dt = _datatype(raw.get("datatype"), name)
        shape, count = _shape(raw.get("shape"), name)
        limits.check_elements(name, shape, count)
        input_params = raw.get("parameters")
        if input_params is None:
            input_params = _NO_PARAMETERS
        elif type(input_params) is not dict:
            raise InvalidInputError(f"input '{name}': 'parameters' must be a JSON object")
        size = input_params.get("binary_data_size")
        if len(input_params) > (size is not None) and any(key in input_params for key in _SHM_KEYS):
            if shared_memory is None:
                raise UnsupportedError(f"input '{name}': shared memory is not supported")
            ref = tensor_ref(input_params, f"input '{name}'")
            if ref is not None:
                _one_source(name, "data" in raw, size is not None)
                array = shared_memory.input_tensor(ref, dt, shape, count, name=name, limits=limits)
                inputs[name] = array
                if dt is DataType.BF16:
                    datatypes[name] = dt
                continue
        if size is not None:
            if "data" in raw:
                raise InvalidInputError(f"input '{name}' has both 'data' and binary_data_size")
            if type(size) is not int or size < 0:
                raise InvalidInputError(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input '{name}': binary_data_size {size} runs past the end of the request body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            array = tensor_bytes.decode(binary[offset : offset + size], dt, shape, count, name=name, limits=limits)
            offset += size
        elif "data" in raw:
            array = _from_json(name, dt, shape, count, raw["data"], limits)
            # Read-only like the binary views, so a model that writes to its inputs fails the
            # same way whichever encoding the client picked.
            array.flags.writeable = False
        else:
            raise InvalidInputError(f"input '{name}' has neither 'data' nor binary_data_size")
        inputs[name] = array
        if dt is DataType.BF16:
            datatypes[name] = dt
    if offset != len(binary):
        raise InvalidInputError(
            f"request body has {len(binary) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )

    outputs = _requested_outputs(doc.get("outputs"), shared_memory is not None)
    return InferRequest(
        inputs=inputs, id=request_id, datatypes=datatypes, parameters=parameters, outputs=outputs
    )


def decode_raw_request(body: memoryview, metadata: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> InferRequest:
    """Decode a "raw binary request" (``Inference-Header-Content-Length: 0``).

    The whole body is the one input of a single-input model; its name, datatype and shape come
    from the model's KServe ``metadata``. At most one dimension may be variable (``-1``): it is
    worked out from the body size. Every output is returned, as JSON.

    Raises:
        InvalidInputError: the model has more than one input, or the body does not fit the
            input's shape.
    """
    model_inputs = metadata.get("inputs") or []
    if len(model_inputs) != 1:
        raise InvalidInputError(
            "a raw binary request (Inference-Header-Content-Length 0) needs a model with exactly "
            f"one input; model '{metadata.get('name', '')}' has {len(model_inputs)}"
        )
    spec = model_inputs[0]
    name = str(spec["name"])
    dt = _datatype(spec["datatype"], name)
    dims = [int(d) for d in spec["shape"]]
    if dims.count(-1) > 1:
        raise InvalidInputError(
            f"input '{name}' has shape {dims}: a raw binary request needs at most one variable dimension"
        )
    fixed = 1
    for d in dims:
        if d != -1:
            fixed *= d
    if dt is DataType.BYTES:
        total = tensor_bytes.count_bytes(body, name=name, limits=limits)
    else:
        if len(body) % dt.itemsize:
            raise InvalidInputError(
                f"input '{name}': raw body of {len(body)} bytes is not a whole number of {dt.value} elements"
            )
        total = len(body) // dt.itemsize
    if -1 in dims:
        if fixed == 0 or total % fixed:
            raise InvalidInputError(f"input '{name}': {total} elements do not fit shape {dims}")
        dims[dims.index(-1)] = total // fixed
    shape = tuple(dims)
    limits.check_elements(name, shape, total)
    array = tensor_bytes.decode(body, dt, shape, total, name=name, limits=limits)
    return InferRequest(
        inputs={name: array}, datatypes={name: dt} if dt is DataType.BF16 else {}, outputs=None
    )


TRITON_RESERVED = "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
"""Triton's words for a request parameter named ``triton_*`` (its frontends refuse them)."""


def _parameters(value: Any, owner: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidInputError(f"{owner}: 'parameters' must be a JSON object")
    return value


def _datatype(value: Any, name: str) -> DataType:
    dt = _BY_NAME.get(value) if type(value) is str else None
    if dt is None:
        raise InvalidInputError(f"input '{name}' has unknown datatype {value!r}")
    return dt


def _shape(value: Any, name: str) -> tuple[tuple[int, ...], int]:
    if type(value) is not list:
        raise InvalidInputError(f"input '{name}' must have a 'shape' list")
    return check_shape(value, name)


def _one_source(name: str, has_data: bool, has_binary: bool) -> None:
    """An input in shared memory has no other data (Triton's message)."""
    if has_data or has_binary:
        given = " 'data'" if has_data else ""
        given += " 'binary_data_size'" if has_binary else ""
        raise InvalidInputError(
            f"input '{name}': Input must set only one of the following fields: 'data', 'binary_data_size' in "
            f"'parameters', 'shared_memory_region' in 'parameters'. But set{given} 'shared_memory_region'"
        )


def _requested_outputs(value: Any, shared_memory: bool = False) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if type(value) is not list:
        raise InvalidInputError("inference request 'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for position, raw in enumerate(value):
        if type(raw) is not dict or type(raw.get("name")) is not str:
            raise InvalidInputError(f"requested output #{position} must be an object with a string 'name'")
        name = raw["name"]
        if name in seen:
            raise InvalidInputError(f"output '{name}' is requested more than once")
        seen.add(name)
        params = raw.get("parameters")
        if params is None:
            params = {}
        elif type(params) is not dict:
            raise InvalidInputError(f"output '{name}': 'parameters' must be a JSON object")
        if params and not shared_memory and any(key in params for key in _SHM_KEYS):
            raise UnsupportedError(f"output '{name}': shared memory is not supported")
        binary = params.get("binary_data")
        if binary is not None and type(binary) is not bool:
            raise InvalidInputError(f"output '{name}': binary_data must be true or false")
        outputs.append(RequestedOutput(name=name, parameters=params))
    return tuple(outputs)


def _flatten(data: Any) -> list[Any]:
    """Row-major flattening of nested JSON lists, without recursion (depth is client-chosen)."""
    if type(data) is not list:
        return [data]
    if not data or type(data[0]) is not list:
        return data  # the common flat case; a stray nested list later fails the type checks
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_json(
    name: str, dt: DataType, shape: tuple[int, ...], count: int, data: Any, limits: Limits
) -> np.ndarray:
    if dt is DataType.FP16 or dt is DataType.BF16:
        raise InvalidInputError(
            f"input '{name}': {dt.value} data cannot be sent as JSON; use the binary tensor data extension"
        )
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInputError(
            f"input '{name}' has {len(flat)} data elements, shape {list(shape)} needs {count}"
        )
    if dt is DataType.BYTES:
        out = np.empty(count, dtype=np.object_)
        for i, value in enumerate(flat):
            if type(value) is not str:
                raise InvalidInputError(
                    f"input '{name}': BYTES data must be strings, element {i} is {type(value).__name__}"
                )
            encoded = value.encode()
            if len(encoded) > limits.max_bytes_element_size:
                limits.check_bytes_element(name, i, len(encoded))
            out[i] = encoded
        return out.reshape(shape)
    target = dt.numpy_dtype
    if count == 0:
        return np.empty(shape, dtype=target)
    try:
        # Let numpy infer the element type first, so strings or nulls are caught instead of
        # being parsed ("1.5" -> 1.5) or cast by ``np.array(flat, dtype=target)``.
        inferred = np.array(flat)
    except (ValueError, TypeError, OverflowError):
        inferred = None
    kind = inferred.dtype.kind if inferred is not None else "O"
    if dt is DataType.BOOL:
        ok = kind == "b"
        expected = "true/false"
    elif dt in _FLOAT_TYPES:
        ok = kind in "fiu"
        expected = "numbers"
    else:
        ok = kind in "iu"
        expected = "integers"
        if ok:
            assert inferred is not None
            low, high = _INT_LIMITS[dt]
            if int(inferred.min()) < low or int(inferred.max()) > high:
                raise InvalidInputError(f"input '{name}': a value is out of range for {dt.value}")
    if not ok:
        raise InvalidInputError(f"input '{name}': {dt.value} data must be {expected}")
    assert inferred is not None
    return inferred.astype(target, copy=False).reshape(shape)


# -------------------------------------------------------------------------- response side


def encode_infer_response(
    response: InferResponse, request: InferRequest, in_shared_memory: Container[str] = ()
) -> tuple[bytes, int | None]:
    """Encode ``response`` to a body for the client that sent ``request``.

    Outputs named in ``in_shared_memory`` have been written to their regions: they are
    described (name, datatype, shape) without data, as Triton answers.

    Returns the body and, when any output went binary, the JSON header's length (the value
    of the ``Inference-Header-Content-Length`` response header); ``None`` for a pure JSON body.
    Outputs come in the order the client asked for them (all outputs, in the response's
    order, when it asked for none). A BYTES output that is not valid UTF-8 cannot be a JSON
    string, so it is sent binary even if JSON was asked for; ``tritonclient`` reads either.
    A requested output the response lacks (an optional output that was not produced) is left
    out, as the gRPC encoder does.

    Raises:
        InternalError: an output array does not match its declared datatype.
    """
    default_binary = request.parameters.get("binary_data_output", False) is True
    if request.outputs is None:
        wanted: list[tuple[str, bool]] = [(name, default_binary) for name in response.outputs]
    else:
        wanted = []
        for requested in request.outputs:
            flag = requested.parameters.get("binary_data")
            wanted.append((requested.name, default_binary if flag is None else flag is True))

    out_json: list[dict[str, Any]] = []
    buffers: list[Any] = []
    for name, binary in wanted:
        array = response.outputs.get(name)
        if array is None:
            # An optional output that was not produced (a pipeline branch that was skipped):
            # absent from the response, as on gRPC and as Triton answers. The engine has
            # already refused requests for outputs a model does not declare, and a model
            # that fails to return a required one.
            continue
        if name in in_shared_memory:
            dt = response.datatypes.get(name) or DataType.from_numpy(array.dtype)
            out_json.append({"name": name, "datatype": dt.value, "shape": list(array.shape)})
            continue
        array = to_host(array)  # a GPU tensor is copied to host here, at the edge
        dt = response.datatypes.get(name) or DataType.from_numpy(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dt.value, "shape": list(array.shape)}
        data: list[Any] | None = None
        if not binary:
            data = _json_data(name, dt, array)
        if data is None:
            raw = tensor_bytes.encode(array, dt, name=name)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = data
        out_json.append(entry)

    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    response_id = response.id or request.id
    if response_id:
        doc["id"] = response_id
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    doc["outputs"] = out_json
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)


def _json_data(name: str, dt: DataType, array: np.ndarray) -> list[Any] | None:
    """The flat JSON ``data`` list, or ``None`` when the output has no JSON form."""
    flat = array.reshape(-1)
    if dt is DataType.BYTES:
        out: list[Any] = []
        for value in flat:
            if isinstance(value, (bytes, bytearray, memoryview)):
                try:
                    out.append(bytes(value).decode("utf-8"))
                except UnicodeDecodeError:
                    return None
            elif isinstance(value, str):
                out.append(value)
            else:
                out.append(str(value))
        return out
    if dt is DataType.BF16:
        # BF16 travels as the upper 16 bits of a float32; JSON clients want the number.
        return (flat.astype(np.uint32) << 16).view(np.float32).tolist()
    tensor_bytes.check_output(array, dt, name=name)
    return flat.tolist()
