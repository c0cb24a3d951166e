"""Pure conversions between KServe v2 gRPC messages and dagserve's request/response objects.

Decoding never trusts a declared shape to size an allocation: a tensor's element count is
compared with the data actually received before any array is shaped, so a request claiming
``[2147483648]`` elements is refused as invalid, not allocated. Fixed-size tensors in
``raw_input_contents`` are wrapped with ``numpy.frombuffer`` without copying; such arrays are
read-only views of the request's bytes, which is why backends must not write into inputs.

Every tensor leaves in ``raw_output_contents`` (as Triton answers), little-endian, BYTES
elements each prefixed with their 4-byte little-endian length.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import tensor_bytes
from .._proto import grpc_service_pb2 as pb
from ..errors import InternalError, InvalidInputError, UnsupportedError
from ..limits import DEFAULT_LIMITS, Limits
from ..shared_memory import SharedMemoryRegistry, TensorRef, tensor_ref
from ..types import DataType, InferRequest, InferResponse, RequestedOutput, check_shape, to_host

__all__ = [
    "decode_infer_request",
    "decode_parameters",
    "encode_infer_response",
    "encode_parameters",
    "tensor_to_raw",
]

_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

# The InferTensorContents list that carries each datatype. The narrow integer types travel
# widened in the 32-bit lists; FP16 and BF16 have no list and must come as raw bytes.
_CONTENTS_FIELD: dict[DataType, str] = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}
_ALL_CONTENTS_FIELDS = tuple(sorted(set(_CONTENTS_FIELD.values())))

# Parameter names of Triton's shared-memory extension (refused when the caller has no registry).
_SHARED_MEMORY_PARAMS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


# --------------------------------------------------------------------------------------------
# Parameters


def decode_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a protobuf parameter map into plain Python values (bool, int, str, float or bytes).

    Works for any parameter message with a ``parameter_choice`` oneof: inference parameters
    (``InferParameter``) and repository ones (``ModelRepositoryParameter``).

    Parameters whose value is unset are left out.
    """
    out: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out


def encode_parameters(values: Mapping[str, Any], target: Any) -> None:
    """Write plain Python parameter values into the protobuf map ``target``.

    bool, int (int64, or uint64 above the int64 range), float, str and bytes (as UTF-8 text)
    are accepted.

    Raises:
        InternalError: a value has some other type, or an int outside both integer ranges.
    """
    for key, value in values.items():
        param = target[key]
        if isinstance(value, (bool, np.bool_)):
            param.bool_param = bool(value)
        elif isinstance(value, (int, np.integer)):
            number = int(value)
            if -(2**63) <= number <= _INT64_MAX:
                param.int64_param = number
            elif 0 <= number <= _UINT64_MAX:
                param.uint64_param = number
            else:
                raise InternalError(f"parameter '{key}' is an integer out of the 64-bit range")
        elif isinstance(value, (float, np.floating)):
            param.double_param = float(value)
        elif isinstance(value, str):
            param.string_param = value
        elif isinstance(value, bytes):
            param.string_param = value.decode("utf-8", errors="replace")
        else:
            raise InternalError(f"parameter '{key}' has unsupported type {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Tensors


def tensor_to_raw(array: np.ndarray, datatype: DataType, *, name: str) -> bytes:
    """The wire bytes of an output tensor of ``datatype`` (see :mod:`dagserve.tensor_bytes`).

    Raises:
        InternalError: the array's dtype is not the one ``datatype`` is held in (the model
            produced something its config does not declare).
    """
    raw = tensor_bytes.encode(array, datatype, name=name, copy=True)
    assert isinstance(raw, bytes)
    return raw


def _shape_of(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[tuple[int, ...], int]:
    """The declared shape and its element count (see :func:`~dagserve.types.check_shape`)."""
    return check_shape(list(tensor.shape), tensor.name)


def _from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor,
    datatype: DataType,
    shape: tuple[int, ...],
    count: int,
    limits: Limits,
) -> np.ndarray:
    name = tensor.name
    field_name = _CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise InvalidInputError(f"input '{name}': {datatype.value} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field_name)
    if len(values) != count:
        others = [f for f in _ALL_CONTENTS_FIELDS if f != field_name and len(getattr(tensor.contents, f))]
        hint = f" (data was sent in {others[0]}, {datatype.value} uses {field_name})" if others else ""
        raise InvalidInputError(
            f"input '{name}': contents hold {len(values)} elements, shape {list(shape)} needs {count}{hint}"
        )
    if datatype is DataType.BYTES:
        for i, value in enumerate(values):
            if len(value) > limits.max_bytes_element_size:
                limits.check_bytes_element(name, i, len(value))
        return np.fromiter(values, dtype=np.object_, count=count).reshape(shape)
    wide = np.fromiter(values, dtype=_wide_dtype(field_name), count=count)
    target = datatype.numpy_dtype
    if target != wide.dtype and count:
        info = np.iinfo(target)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInputError(f"input '{name}': a value is out of range for {datatype.value}")
    return wide.astype(target, copy=False).reshape(shape)


def _wide_dtype(field_name: str) -> np.dtype[Any]:
    return np.dtype(
        {
            "bool_contents": np.bool_,
            "int_contents": np.int32,
            "int64_contents": np.int64,
            "uint_contents": np.uint32,
            "uint64_contents": np.uint64,
            "fp32_contents": np.float32,
            "fp64_contents": np.float64,
        }[field_name]
    )


def _has_contents(tensor: pb.ModelInferRequest.InferInputTensor) -> bool:
    return tensor.HasField("contents") and any(len(getattr(tensor.contents, f)) for f in _ALL_CONTENTS_FIELDS)


def _refuse_shared_memory(where: str, params: Iterable[str]) -> None:
    for key in params:
        if key in _SHARED_MEMORY_PARAMS:
            raise UnsupportedError(f"{where}: shared memory ('{key}') is not supported by dagserve")


# --------------------------------------------------------------------------------------------
# Requests and responses


def decode_infer_request(
    msg: pb.ModelInferRequest,
    *,
    drop_parameters: Sequence[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    shared_memory: SharedMemoryRegistry | None = None,
) -> InferRequest:
    """Decode a ``ModelInferRequest`` into an :class:`InferRequest` of numpy arrays.

    Every input's wire datatype is recorded in ``InferRequest.datatypes``. Request parameters
    named in ``drop_parameters`` (ones the frontend itself consumes) are left out. An input
    naming a ``shared_memory_region`` is read from ``shared_memory`` and has no entry in
    ``raw_input_contents`` (as ``tritonclient`` sends it); requested outputs keep their
    shared-memory parameters for the frontend to resolve.

    Raises:
        InvalidInputError: unknown datatype, duplicate input, negative dimension, element count
            or byte size not matching the shape, raw and typed contents mixed, or the number of
            raw_input_contents entries not matching the inputs, or over one of ``limits``
            (checked before any array is built).
        UnsupportedError: the request uses shared memory and no ``shared_memory`` is given, or
            client shared memory is not allowed.
        RegionNotFoundError: an input names a region that is not registered.
    """
    limits.check_inputs(len(msg.inputs))  # security: limits before allocation
    raw = msg.raw_input_contents
    refs: dict[int, TensorRef] = {}
    if shared_memory is not None:
        for index, tensor in enumerate(msg.inputs):
            if tensor.parameters:
                ref = tensor_ref(decode_parameters(tensor.parameters), f"input '{tensor.name}'")
                if ref is not None:
                    refs[index] = ref
    if raw and len(raw) != len(msg.inputs) - len(refs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(msg.inputs) - len(refs)} inputs"
            + (" not in shared memory" if refs else "")
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, DataType] = {}
    raw_index = 0
    for index, tensor in enumerate(msg.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInputError(f"input '{name}' appears more than once")
        if shared_memory is None:
            _refuse_shared_memory(f"input '{name}'", tensor.parameters)
        try:
            datatype = DataType(tensor.datatype)
        except ValueError:
            raise InvalidInputError(f"input '{name}': unknown datatype '{tensor.datatype}'") from None
        shape, count = _shape_of(tensor)
        limits.check_elements(name, shape, count)
        ref = refs.get(index)
        if ref is not None:
            if _has_contents(tensor):
                raise InvalidInputError(
                    f"unexpected 'content' provided when using shared memory for input tensor '{name}' "
                    f"for model '{msg.model_name}'"
                )
            assert shared_memory is not None
            inputs[name] = shared_memory.input_tensor(ref, datatype, shape, count, name=name, limits=limits)
            datatypes[name] = datatype
            continue
        position = raw_index
        raw_index += 1
        if raw:
            if _has_contents(tensor):
                raise InvalidInputError(
                    f"input '{name}': has typed contents while the request uses raw_input_contents; "
                    "send every input one way"
                )
            array = tensor_bytes.decode(raw[position], datatype, shape, count, name=name, limits=limits)
        elif _has_contents(tensor):
            array = _from_contents(tensor, datatype, shape, count, limits)
        elif count == 0:
            array = np.empty(shape, dtype=datatype.numpy_dtype)
        else:
            raise InvalidInputError(f"input '{name}': no data (neither contents nor raw_input_contents)")
        inputs[name] = array
        datatypes[name] = datatype

    outputs: tuple[RequestedOutput, ...] | None = None
    if msg.outputs:
        if shared_memory is None:
            for out in msg.outputs:
                _refuse_shared_memory(f"output '{out.name}'", out.parameters)
        outputs = tuple(
            RequestedOutput(name=o.name, parameters=decode_parameters(o.parameters)) for o in msg.outputs
        )
    parameters = decode_parameters(msg.parameters)
    for key in drop_parameters:
        parameters.pop(key, None)
    if any(key.startswith("triton_") for key in parameters):
        raise InvalidInputError(
            "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
        )
    return InferRequest(inputs=inputs, id=msg.id, datatypes=datatypes, parameters=parameters, outputs=outputs)


def encode_infer_response(
    response: InferResponse,
    *,
    request_id: str = "",
    target: pb.ModelInferResponse | None = None,
    in_shared_memory: Container[str] = (),
) -> pb.ModelInferResponse:
    """Encode an :class:`InferResponse` as a ``ModelInferResponse`` with raw output contents.

    The response id falls back to ``request_id`` when the engine left it empty. ``target``
    (e.g. the ``infer_response`` of a stream message) is filled in place when given. Outputs
    named in ``in_shared_memory`` have been written to their regions: they get an empty
    ``raw_output_contents`` entry, as Triton answers.

    Raises:
        InternalError: an output's dtype contradicts its declared datatype, or a parameter
            value cannot be encoded.
    """
    msg = target if target is not None else pb.ModelInferResponse()
    msg.model_name = response.model_name
    msg.model_version = response.model_version
    msg.id = response.id or request_id
    encode_parameters(response.parameters, msg.parameters)
    for name, array in response.outputs.items():
        array = to_host(array)  # a GPU tensor is copied to host here, at the edge
        datatype = response.datatypes.get(name)
        if datatype is None:
            try:
                datatype = DataType.from_numpy(array.dtype)
            except ValueError as exc:
                raise InternalError(f"output '{name}': {exc}") from None
        msg.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        if name in in_shared_memory:
            msg.raw_output_contents.append(b"")
        else:
            msg.raw_output_contents.append(tensor_to_raw(array, datatype, name=name))
    return msg
