"""Config parsing: Triton pbtxt and native YAML give the same ModelConfig; errors name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagserve import ConfigError, DataType
from dagserve.repository.loader import parse_config, read_model

PBTXT = """
name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3, -1 ] } ]
output [ { name: "Y" data_type: TYPE_STRING dims: [ 1 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "factor" value: { string_value: "3" } }
version_policy: { latest: { num_versions: 2 } }
"""

YAML = """
backend: python
max_batch_size: 8
inputs: [{name: X, datatype: FP32, shape: [3, -1]}]
outputs: [{name: Y, datatype: BYTES, shape: [1]}]
dynamic_batching: {preferred_batch_size: [4, 8], max_queue_delay_microseconds: 100}
instance_group: [{count: 2, kind: KIND_CPU}]
parameters: {factor: 3}
version_policy: {latest: {num_versions: 2}}
"""


def test_pbtxt_and_yaml_give_equal_configs() -> None:
    """The same model written as config.pbtxt and as config.yaml parses to equal configs."""
    a = parse_config(PBTXT, path=Path("m/config.pbtxt"), name="m")
    b = parse_config(YAML, path=Path("m/config.yaml"), name="m")
    assert a == b
    assert a.input[0].data_type is DataType.FP32 and a.input[0].dims == (3, -1)
    assert a.output[0].data_type is DataType.BYTES
    assert a.parameters == {"factor": "3"}
    assert a.dynamic_batching is not None and a.dynamic_batching.preferred_batch_size == (4, 8)


def test_pbtxt_parameter_may_be_an_empty_string() -> None:
    """``string_value: ""`` is a parameter whose value is empty, as on Triton (protobuf leaves
    a default value out of its dict, which read as a parameter with no value)."""
    text = PBTXT.replace('parameters { key: "factor"', 'parameters { key: "env" value: { string_value: "" } }\nparameters { key: "factor"')
    config = parse_config(text, path=Path("m/config.pbtxt"), name="m")
    assert config.parameters == {"env": "", "factor": "3"}


def test_triton_json_shape() -> None:
    """/config's JSON uses Triton's field names and TYPE_* datatypes."""
    data = parse_config(PBTXT, path=Path("m/config.pbtxt"), name="m").to_triton_json()
    assert data["input"][0]["data_type"] == "TYPE_FP32"
    assert data["output"][0]["data_type"] == "TYPE_STRING"
    assert data["parameters"] == {"factor": {"string_value": "3"}}
    assert data["version_policy"] == {"latest": {"num_versions": 2}}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("max_batch_sise: 4", "max_batch_sise"),
        ("max_batch_size: lots", "max_batch_size"),
        ("max_batch_size: -1", "max_batch_size"),
        ("inputs: [{name: X, shape: [1]}]", "inputs[0].data_type"),
        ("inputs: [{name: X, datatype: FP33, shape: [1]}]", "inputs[0].datatype"),
        ("inputs: [{name: X, datatype: FP32, shape: [0]}]", "inputs[0].shape"),
        ("version_policy: {latest: {num_versions: 1}, all: {}}", "version_policy"),
    ],
)
def test_yaml_errors_name_file_and_field(text: str, field: str) -> None:
    """Unknown keys, bad types, bad values and missing fields name the file and the field."""
    with pytest.raises(ConfigError) as info:
        parse_config("backend: python\n" + text, path=Path("repo/m/config.yaml"), name="m")
    assert "repo/m/config.yaml" in str(info.value)
    assert f"field '{field}'" in str(info.value)


def test_pbtxt_syntax_error_names_line() -> None:
    """A pbtxt typo is reported with the file, line and column."""
    with pytest.raises(ConfigError, match=r"m/config.pbtxt:2:1"):
        parse_config('name: "m"\nmax_batch_sise: 4\n', path=Path("m/config.pbtxt"), name="m")


def test_name_must_match_directory() -> None:
    with pytest.raises(ConfigError, match="does not match the directory name 'other'"):
        parse_config('name: "m"', path=Path("other/config.pbtxt"), name="other")


def test_version_policies(tmp_path: Path) -> None:
    """latest (default 1), all and specific pick version directories as Triton does."""
    model = tmp_path / "m"
    for v in (1, 2, 7):
        (model / str(v)).mkdir(parents=True)
    cases = {
        "": (7,),
        "version_policy: {latest: {num_versions: 2}}": (2, 7),
        "version_policy: {all: {}}": (1, 2, 7),
        "version_policy: {specific: {versions: [1, 7, 9]}}": (1, 7),
    }
    for policy, expected in cases.items():
        (model / "config.yaml").write_text("backend: python\n" + policy)
        assert read_model(model).versions == expected, policy


def test_model_without_versions_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.yaml").write_text("backend: python\n")
    assert "no version directory" in read_model(tmp_path / "m").error


def test_both_config_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("backend: python\n")
    (tmp_path / "m" / "config.pbtxt").write_text('backend: "python"\n')
    assert "keep one" in read_model(tmp_path / "m").error


def test_yaml_parameters_take_numbers_booleans_and_dates_as_their_text() -> None:
    """A YAML parameter written as a number, boolean or date reaches the model as the string
    Triton would store (``string_value``); a list or an empty value is refused naming the key."""
    config = parse_config(
        "backend: python\nparameters: {factor: 3, ratio: 0.5, explain: true, quiet: false, since: 2026-01-02, name: x}\n",
        path=Path("m/config.yaml"),
        name="m",
    )
    assert config.parameters == {
        "factor": "3", "ratio": "0.5", "explain": "true", "quiet": "false", "since": "2026-01-02", "name": "x",
    }
    assert config.to_triton_json()["parameters"]["explain"] == {"string_value": "true"}
    for value, kind in (("[1, 2]", "a list"), ("", "no value")):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"backend: python\nparameters:\n  labels: {value}\n", path=Path("m/config.yaml"), name="m")
        message = str(caught.value)
        assert "m/config.yaml:" in message and f"parameter 'labels' has {kind}" in message, message
        assert "quote it" in message
