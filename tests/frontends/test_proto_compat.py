"""dagserve's hand-written protos stay wire-compatible with the stock Triton client's."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from dagserve._proto import grpc_service_pb2, health_pb2, model_config_pb2


def _field_signature(desc: Descriptor) -> dict[str, tuple[Any, ...]]:
    """Name -> (number, type, repeated, message/enum type name, oneof name) of each field."""
    out = {}
    for f in desc.fields:
        ref = f.message_type or f.enum_type
        oneof = f.containing_oneof.name if f.containing_oneof else None
        out[f.name] = (f.number, f.type, f.is_repeated, ref.full_name if ref else None, oneof)
    return out


def _enum_signature(desc: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in desc.values}


def _assert_messages_cover(theirs: Descriptor, ours: Descriptor) -> None:
    """Every field, nested message and enum of ``theirs`` exists identically in ``ours``."""
    mine = _field_signature(ours)
    for name, sig in _field_signature(theirs).items():
        assert mine.get(name) == sig, f"{theirs.full_name}.{name}: ours {mine.get(name)}, theirs {sig}"
    for name, nested in theirs.nested_types_by_name.items():
        assert name in ours.nested_types_by_name, f"{theirs.full_name}.{name} missing"
        _assert_messages_cover(nested, ours.nested_types_by_name[name])
    for name, enum in theirs.enum_types_by_name.items():
        assert _enum_signature(ours.enum_types_by_name[name]) == _enum_signature(enum), name


def _assert_file_covers(theirs: FileDescriptor, ours: FileDescriptor) -> None:
    assert ours.package == theirs.package
    for name, msg in theirs.message_types_by_name.items():
        assert name in ours.message_types_by_name, f"message {name} missing"
        _assert_messages_cover(msg, ours.message_types_by_name[name])
    for name, enum in theirs.enum_types_by_name.items():
        assert _enum_signature(ours.enum_types_by_name[name]) == _enum_signature(enum), name


def test_model_config_proto_matches_triton() -> None:
    """model_config.proto has every message, field number, type and enum value Triton's has."""
    _assert_file_covers(triton_config.DESCRIPTOR, model_config_pb2.DESCRIPTOR)


def test_grpc_service_proto_matches_triton() -> None:
    """grpc_service.proto has every message and RPC of Triton's, with identical signatures."""
    _assert_file_covers(triton_service.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR)
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    for method in theirs.methods:
        mine = ours.methods_by_name[method.name]
        assert (mine.input_type.full_name, mine.output_type.full_name) == (
            method.input_type.full_name,
            method.output_type.full_name,
        )
        assert (mine.client_streaming, mine.server_streaming) == (
            method.client_streaming,
            method.server_streaming,
        )


def test_health_proto_is_the_standard_one() -> None:
    """health.proto declares grpc.health.v1.Health with the standard statuses."""
    service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    assert service.full_name == "grpc.health.v1.Health"
    assert [m.name for m in service.methods] == ["Check", "Watch"]
    statuses = _enum_signature(health_pb2.HealthCheckResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"])
    assert statuses == {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}


def _full_infer_request(module: Any) -> Any:
    """A ModelInferRequest with every field (and every parameter kind) set."""
    req = module.ModelInferRequest(model_name="add_sub", model_version="3", id="req-1")
    req.parameters["b"].bool_param = True
    req.parameters["i"].int64_param = -7
    req.parameters["s"].string_param = "text"
    req.parameters["d"].double_param = 0.25
    req.parameters["u"].uint64_param = 2**64 - 1
    typed = req.inputs.add(name="TYPED", datatype="INT64", shape=[2, 2])
    typed.parameters["p"].string_param = "x"
    typed.contents.int64_contents.extend([1, 2, 3, 4])
    typed.contents.bytes_contents.append(b"\x00\xff")
    typed.contents.bool_contents.append(True)
    typed.contents.int_contents.append(-1)
    typed.contents.uint_contents.append(1)
    typed.contents.uint64_contents.append(2)
    typed.contents.fp32_contents.append(1.5)
    typed.contents.fp64_contents.append(2.5)
    req.inputs.add(name="RAW", datatype="FP32", shape=[1])
    out = req.outputs.add(name="OUTPUT0")
    out.parameters["classification"].int64_param = 3
    req.raw_input_contents.extend([b"", b"\x00\x00\x80\x3f"])
    return req


def test_infer_request_from_tritonclient_parses_identically() -> None:
    """A fully populated tritonclient request decodes into our message field for field."""
    theirs = _full_infer_request(triton_service)
    ours = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(theirs)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


def test_infer_response_round_trips_to_tritonclient() -> None:
    """Our ModelInferResponse and ModelStreamInferResponse decode unchanged in tritonclient."""
    resp = grpc_service_pb2.ModelInferResponse(model_name="m", model_version="1", id="r")
    resp.parameters["triton_final_response"].bool_param = True
    resp.outputs.add(name="OUT", datatype="BYTES", shape=[1]).parameters["k"].uint64_param = 9
    resp.raw_output_contents.append(b"\x01\x00\x00\x00a")
    stream = grpc_service_pb2.ModelStreamInferResponse(error_message="", infer_response=resp)
    theirs = triton_service.ModelStreamInferResponse.FromString(stream.SerializeToString())
    assert json_format.MessageToDict(theirs) == json_format.MessageToDict(stream)


def test_model_config_response_round_trips_to_tritonclient() -> None:
    """A ModelConfigResponse using every scheduling and tensor feature decodes in tritonclient."""
    config = text_format.Parse(
        """
        name: "m" backend: "python" max_batch_size: 8
        version_policy { specific { versions: [1, 3] } }
        input [{ name: "I" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, -1]
                 reshape { shape: [-1] } optional: true allow_ragged_batch: true }]
        output [{ name: "O" data_type: TYPE_STRING dims: [1] label_filename: "labels.txt" }]
        batch_input [{ kind: BATCH_ITEM_SHAPE target_name: "S" data_type: TYPE_INT32 source_input: "I" }]
        sequence_batching {
          max_sequence_idle_microseconds: 5000
          oldest { max_candidate_sequences: 4 preferred_batch_size: [2] }
          control_input [{ name: "START" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] }]
          state [{ input_name: "SI" output_name: "SO" data_type: TYPE_FP32 dims: [1]
                   initial_state [{ data_type: TYPE_FP32 dims: [1] zero_data: true name: "z" }] }]
        }
        instance_group [{ name: "g" count: 2 kind: KIND_GPU gpus: [0]
                          rate_limiter { resources [{ name: "R" count: 1 }] priority: 2 } }]
        parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/env" } }
        model_warmup [{ name: "w" batch_size: 1 inputs { key: "I" value { data_type: TYPE_FP32
                        dims: [3] random_data: true } } }]
        optimization { cuda { graphs: true graph_spec [{ batch_size: 1 input { key: "I"
                       value { dim: [3] } } }] } priority: PRIORITY_MAX }
        model_transaction_policy { decoupled: true }
        response_cache { enable: true }
        """,
        model_config_pb2.ModelConfig(),
    )
    ours = grpc_service_pb2.ModelConfigResponse(config=config)
    theirs = triton_service.ModelConfigResponse.FromString(ours.SerializeToString())
    assert json_format.MessageToDict(theirs) == json_format.MessageToDict(ours)
    # And the other way: a tritonclient-built config reads back the same in ours.
    again = grpc_service_pb2.ModelConfigResponse.FromString(theirs.SerializeToString())
    assert again == ours


def test_text_format_config_parses() -> None:
    """A minimal config.pbtxt parses into our ModelConfig."""
    config = text_format.Parse(
        'name: "x" max_batch_size: 8 input [{name: "I" data_type: TYPE_FP32 dims: [4]}]',
        model_config_pb2.ModelConfig(),
    )
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [4]
