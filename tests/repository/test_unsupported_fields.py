"""Every field of Triton's model config that dagserve has no behaviour for fails the load with
the file, the field and "not supported by dagserve", in config.pbtxt (with its line) and in
config.yaml; none is silently ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format, text_format

from dagserve import ConfigError
from dagserve._proto import model_config_pb2
from dagserve.cli import main
from dagserve.repository.loader import parse_config

HEAD = 'backend: "python"\nmax_batch_size: 4\n'
X = 'name: "X" data_type: TYPE_FP32 dims: [ 1 ]'
Y = 'name: "Y" data_type: TYPE_FP32 dims: [ 1 ]'
IO = f"input [ {{ {X} }} ]\noutput [ {{ {Y} }} ]\n"
STATE = 'input_name: "SI" output_name: "SO" data_type: TYPE_FP32 dims: [ 1 ]'

# (field path as reported, the config's extra lines (after HEAD), a word of the reason)
CASES = [
    ("input[0].allow_ragged_batch", f"input [ {{ {X}\n  allow_ragged_batch: true }} ]\noutput [ {{ {Y} }} ]\n", "ragged"),
    ("input[0].is_shape_tensor", f"input [ {{ {X}\n  is_shape_tensor: true }} ]\noutput [ {{ {Y} }} ]\n", "TensorRT"),
    ("output[0].is_non_linear_format_io",
     f"input [ {{ {X} }} ]\noutput [ {{ {Y}\n  is_non_linear_format_io: true }} ]\n", "TensorRT"),
    ("instance_group[0].rate_limiter",
     IO + 'instance_group [ { count: 1\n  rate_limiter { resources [ { name: "R" count: 1 } ] priority: 2 } } ]\n',
     "rate limiter"),
    ("instance_group[0].secondary_devices",
     IO + "instance_group [ { count: 1\n  secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ] } ]\n", "secondary"),
    ("instance_group[0].profile", IO + 'instance_group [ { count: 1\n  profile: [ "0" ] } ]\n', "TensorRT"),
    ("instance_group[0].passive", IO + "instance_group [ { count: 1\n  passive: true } ]\n", "passive"),
    ("instance_group[0].host_policy", IO + 'instance_group [ { count: 1\n  host_policy: "numa0" } ]\n', "host polic"),
    ("batch_input",
     IO + 'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_FP32 source_input: "X" } ]\n',
     "ragged"),
    ("batch_output",
     IO + 'batch_output [ { target_name: "Y" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "X" } ]\n', "ragged"),
    ("sequence_batching.iterative_sequence", IO + "sequence_batching {\n  iterative_sequence: true }\n", "iterative"),
    ("sequence_batching.state[0].use_growable_memory",
     IO + f"sequence_batching {{ state [ {{ {STATE}\n  use_growable_memory: true }} ] }}\n", "TensorRT"),
    ("sequence_batching.state[0].use_same_buffer_for_input_output",
     IO + f"sequence_batching {{ state [ {{ {STATE}\n  use_same_buffer_for_input_output: true }} ] }}\n", "TensorRT"),
    ("sequence_batching.state[0].initial_state",
     IO + f"sequence_batching {{ state [ {{ {STATE}\n  initial_state {{ data_type: TYPE_FP32 dims: [ 1 ] "
          'data_file: "init.bin" name: "f" } } ] }\n', "data_file"),
    ("ensemble_scheduling.step[0].model_namespace",
     IO + 'ensemble_scheduling { step [ { model_name: "m2" model_version: -1\n  model_namespace: "team" '
       'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } ] }\n', "namespac"),
    ("cc_model_filenames", IO + 'cc_model_filenames { key: "7.5" value: "m.plan" }\n', "compute capability"),
    ("metric_tags", IO + 'metric_tags { key: "team" value: "a" }\n', "metric labels"),
    ("model_operations", IO + 'model_operations { op_library_filename: "ops.so" }\n', "operation"),
    ("model_repository_agents", IO + 'model_repository_agents { agents [ { name: "checksum" } ] }\n', "agents"),
    ("runtime", IO + 'runtime: "model.py"\n', "runtime"),
]
IDS = [c[0] for c in CASES]


def _line(text: str, field: str) -> int:
    """The line of ``text`` that sets the reported field (each case starts that line with it)."""
    name = field.split(".")[-1]
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.lstrip().startswith(name))


@pytest.mark.parametrize(("field", "extra", "why"), CASES, ids=IDS)
def test_pbtxt_refuses_the_field_with_its_line(field: str, extra: str, why: str) -> None:
    """config.pbtxt: the error names the file, the line, the field path and the reason."""
    text = HEAD + extra
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=Path("m/config.pbtxt"), name="m")
    message = str(info.value)
    assert f"m/config.pbtxt:{_line(text, field)}: field '{field}': not supported by dagserve: " in message, message
    assert why in message


@pytest.mark.parametrize(("field", "extra", "why"), CASES, ids=IDS)
def test_yaml_refuses_the_field(field: str, extra: str, why: str) -> None:
    """config.yaml with the same fields: the error names the file, the line and column of the
    field, the field path and the reason."""
    data = json_format.MessageToDict(
        text_format.Parse(HEAD + extra, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
    )
    text = yaml.safe_dump(data)
    with pytest.raises(ConfigError) as info:
        parse_config(text, path=Path("m/config.yaml"), name="m")
    message = str(info.value)
    found = re.search(rf"m/config\.yaml:(\d+):(\d+): field '{re.escape(field)}': not supported by dagserve: ", message)
    assert found, message
    line, column = int(found[1]), int(found[2])
    assert text.splitlines()[line - 1][column - 1:].startswith(field.split(".")[-1].split("[")[0] + ":"), message
    assert why in message


def test_default_values_of_those_fields_load() -> None:
    """Writing a refused field with its default value (false, empty) is accepted: no behaviour is missing."""
    text = HEAD + (
        f"input [ {{ {X} allow_ragged_batch: false is_shape_tensor: false }} ]\n"
        f"output [ {{ {Y} label_filename: \"\" }} ]\ninstance_group [ {{ count: 1 passive: false host_policy: \"\" }} ]\n"
    )
    config = parse_config(text, path=Path("m/config.pbtxt"), name="m")
    assert config.instance_group[0].count == 1
    yaml_config = parse_config(
        "backend: python\nmax_batch_size: 4\n"
        "inputs: [{name: X, datatype: FP32, shape: [1], allow_ragged_batch: false, label_filename: ''}]\n"
        "outputs: [{name: Y, datatype: FP32, shape: [1]}]\ninstance_group: [{count: 1, rate_limiter: null}]\n",
        path=Path("m/config.yaml"), name="m",
    )
    assert yaml_config.input[0].name == "X"


def test_every_field_of_tritons_schema_is_declared() -> None:
    """No field of Triton's ModelConfig (at any depth the schema models) is unknown to ours, so
    none can be dropped: each is implemented or refused."""
    from dagserve.repository import config as schema

    def walk(descriptor: object, model: type, where: str) -> list[str]:
        missing = []
        for f in descriptor.fields:  # type: ignore[attr-defined]
            if f.name not in model.model_fields:  # type: ignore[attr-defined]
                missing.append(where + f.name)
                continue
            sub = _frozen_type(model.model_fields[f.name].annotation)  # type: ignore[attr-defined]
            message = f.message_type
            if message is not None and message.GetOptions().map_entry:
                message = message.fields_by_name["value"].message_type  # a map: check its values
            if message is not None and sub is not None:
                missing += walk(message, sub, f"{where}{f.name}.")
        return missing

    def _frozen_type(annotation: object) -> type | None:
        import typing

        stack = [annotation]
        while stack:
            a = stack.pop()
            if isinstance(a, type) and issubclass(a, schema._Frozen):
                return a
            stack.extend(typing.get_args(a))
        return None

    assert walk(model_config_pb2.ModelConfig.DESCRIPTOR, schema.ModelConfig, "") == []


def test_validate_cli_reports_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dagserve validate` on a repository with allow_ragged_batch exits 1 naming the model, file, line and field."""
    model = tmp_path / "ragged"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("def infer(inputs):\n    return {'Y': inputs['X']}\n")
    text = HEAD + f'input [ {{ {X}\n  allow_ragged_batch: true }} ]\noutput [ {{ {Y} }} ]\n'
    (model / "config.pbtxt").write_text(text)
    status = main(["validate", str(tmp_path)])
    out = capsys.readouterr()
    assert status == 1
    assert "config.pbtxt:4: field 'input[0].allow_ragged_batch': not supported by dagserve" in out.out + out.err
