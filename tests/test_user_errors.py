"""Errors point at the user's own file: a config error names the file, the line (and column, in
YAML), the field and, for a misspelt name, the closest right one; a pipeline error names the
pipeline file's line (YAML or Python DSL), never dagserve's own source."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dagserve import ConfigError, Server, ServerOptions
from dagserve._proto import model_config_pb2
from dagserve.cli import main
from dagserve.repository.loader import parse_config, read_model
from dagserve.repository.locations import did_you_mean, pbtxt_index, yaml_index

PIPELINES = Path(__file__).parent / "repos" / "pipelines"


def write(root: Path, files: dict[str, str]) -> Path:
    """Write each file (its text dedented, without the first newline) under ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def steps(text: str) -> str:
    """``text`` (YAML list items, then ``outputs:``) indented to sit under YAML_HEAD's ``pipeline:``."""
    return textwrap.indent(textwrap.dedent(text).lstrip("\n"), "  ")


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(path.read_text(), path=path, name=path.parent.name)
    return str(info.value)


# -- config.yaml -----------------------------------------------------------------------------------
def test_yaml_unknown_key_has_line_column_and_hint(tmp_path: Path) -> None:
    """A misspelt key is reported at its line and column with the closest field of that place."""
    path = write(tmp_path, {"m/config.yaml": """
        backend: python
        inputs:
          - {name: X, datatype: FP32, shape: [3]}
        outputs:
          - name: Y
            datatype: FP32
            shap: [3]
    """}) / "m" / "config.yaml"
    assert config_error(path) == f"{path}:7:5: field 'outputs[0].shap': unknown field 'shap' (did you mean 'shape'?)"


def test_yaml_bad_value_has_line_column(tmp_path: Path) -> None:
    """A bad value deep in the file is reported at its key; a misspelt datatype gets a hint."""
    path = write(tmp_path, {"m/config.yaml": """
        backend: python
        max_batch_size: 4
        inputs: [{name: X, datatype: FP33, shape: [3]}]
        outputs: [{name: Y, datatype: FP32, shape: [3]}]
        dynamic_batchin: {}
    """}) / "m" / "config.yaml"
    message = config_error(path)
    assert message == (
        f"{path}:3:20: field 'inputs[0].datatype': unknown datatype 'FP33' (did you mean 'FP32'?); "
        f"{path}:5:1: field 'dynamic_batchin': unknown field 'dynamic_batchin' (did you mean 'dynamic_batching'?)"
    )


def test_invalid_yaml_has_line_column(tmp_path: Path) -> None:
    """YAML that does not parse is reported at the parser's mark."""
    path = write(tmp_path, {"m/config.yaml": "backend: python\ninputs: [{name: X\n"}) / "m" / "config.yaml"
    assert config_error(path).startswith(f"{path}:3:1: invalid YAML: ")


# -- config.pbtxt ----------------------------------------------------------------------------------
def test_pbtxt_field_error_has_its_line(tmp_path: Path) -> None:
    """A value protobuf accepts but the schema refuses is reported at the line that sets it."""
    path = write(tmp_path, {"m/config.pbtxt": """
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [
          { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] },
          { name: "Z" data_type: TYPE_FP32
            dims: [ -2 ] }
        ]
        instance_group { count: 1 }
        instance_group { count: -1 }
    """}) / "m" / "config.pbtxt"
    assert config_error(path) == (
        f"{path}:6: field 'output[1].dims': dimension -2 is invalid (use a positive size or -1 for any size); "
        f"{path}:9: field 'instance_group[1].count': Input should be greater than or equal to 1"
    )


def test_pbtxt_unknown_field_and_enum_value_get_hints(tmp_path: Path) -> None:
    """protobuf's own errors (with line and column) get the closest field or enum value."""
    path = write(tmp_path, {"m/config.pbtxt": 'backend: "python"\ninput [ { name: "X"\n  dimz: [ 3 ] } ]\n'})
    path = path / "m" / "config.pbtxt"
    assert config_error(path) == (
        f'{path}:3:3 : Message type "inference.ModelInput" has no field named "dimz". (did you mean \'dims\'?)'
    )
    path.write_text('backend: "python"\ninput [ { name: "X" data_type: TYPE_FP322 dims: [ 3 ] } ]\n')
    message = config_error(path)
    assert message.startswith(f"{path}:2:") and message.endswith("(did you mean 'TYPE_FP32'?)"), message


# -- backends --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("file", "text", "where", "expected"),
    [
        ("config.pbtxt", 'name: "m"\nbackend: "onnxrntime"\n', ":2",
         "field 'backend': unknown backend 'onnxrntime' (did you mean 'onnxruntime'?)"),
        ("config.yaml", "max_batch_size: 0\nbackend: pyhton\n", ":2:1",
         "field 'backend': unknown backend 'pyhton' (did you mean 'python'?)"),
        ("config.pbtxt", 'platform: "onnxruntime_onx"\n', ":1",
         "field 'platform': unknown platform 'onnxruntime_onx' (did you mean 'onnxruntime_onnx'?)"),
    ],
)
def test_backend_typo_is_named_not_a_missing_version(
    tmp_path: Path, file: str, text: str, where: str, expected: str
) -> None:
    """A misspelt backend is reported as such, at its line, with the right name as a hint,
    before (instead of) "no version directory"."""
    path = write(tmp_path, {f"m/{file}": text}) / "m" / file
    error = read_model(path.parent).error
    assert error.startswith(f"{path}{where}: {expected}; dagserve has: "), error
    assert "version directory" not in error


def test_missing_backend_says_what_to_set(tmp_path: Path) -> None:
    """A config with neither backend nor platform says to set one."""
    path = write(tmp_path, {"m/config.yaml": "max_batch_size: 0\n"}) / "m" / "config.yaml"
    assert read_model(path.parent).error.startswith(f"{path}: field 'backend': no backend or platform set")


def test_validate_prints_the_backend_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dagserve validate` shows the same message for the model."""
    write(tmp_path, {"m/config.pbtxt": 'backend: "onnxrntime"\n', "m/1/model.onnx": ""})
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"error: m: {tmp_path}/m/config.pbtxt:1: field 'backend': unknown backend 'onnxrntime' " in out
    assert "(did you mean 'onnxruntime'?)" in out


# -- YAML pipelines --------------------------------------------------------------------------------
MEMBERS = ("preprocess", "classifier", "postprocess")


def pipeline_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    import shutil

    for name in MEMBERS:
        shutil.copytree(PIPELINES / name, tmp_path / name)
    return write(tmp_path, files)


YAML_HEAD = textwrap.dedent("""
    backend: pipeline
    inputs: [{name: RAW, datatype: UINT8, shape: [-1]}]
    outputs: [{name: LABEL, datatype: BYTES, shape: [1]}]
    pipeline:
      steps:
""").lstrip("\n")


async def load_reason(repo: Path, name: str) -> str:
    """The reason the server gives for ``name`` not loading."""
    async with Server(ServerOptions(model_repository=repo)) as server:
        entry = next(m for m in server.repository_index() if m["name"] == name)
        assert entry["state"] != "READY"
        return str(entry["reason"])


@pytest.mark.anyio
async def test_yaml_pipeline_step_errors_point_at_the_step(tmp_path: Path) -> None:
    """A misspelt member model, tensor and step are each reported at the step's line, with hints."""
    path = pipeline_repo(tmp_path, {"p/config.yaml": YAML_HEAD + steps("""
            - model: preprocss
              inputs: {RAW: RAW}
            - model: classifier
              inputs: {FEATURES: preprocess.FEATURE}
            - model: postprocess
              inputs: {LOGITS: classifer.LOGITS}
          outputs:
            LABEL: postprocess.LABEL
    """)}) / "p" / "config.yaml"
    reason = await load_reason(tmp_path, "p")
    assert f"{path}:6: pipeline 'p', step 'preprocss': unknown model 'preprocss' (did you mean 'preprocess'?)" in reason
    assert (f"{path}:10: pipeline 'p', step 'postprocess': input 'LOGITS' reads 'classifer.LOGITS', but no step "
            "is named 'classifer' (did you mean 'classifier'?)") in reason
    assert "from_yaml.py" not in reason and "validate.py" not in reason


@pytest.mark.anyio
async def test_yaml_pipeline_unknown_output_of_a_step(tmp_path: Path) -> None:
    """Reading an output a member does not have names it, the closest one and the step's line."""
    path = pipeline_repo(tmp_path, {"p/config.yaml": YAML_HEAD + steps("""
            - model: preprocess
              inputs: {RAW: RAW}
            - model: classifier
              inputs: {FEATURES: preprocess.FEATURE}
            - model: postprocess
              inputs: {LOGITS: classifier.LOGITS}
          outputs:
            LABEL: postprocess.LABEL
    """)}) / "p" / "config.yaml"
    reason = await load_reason(tmp_path, "p")
    assert (f"{path}:8: pipeline 'p', step 'classifier': input 'FEATURES' reads 'preprocess.FEATURE', but model "
            "'preprocess' of step 'preprocess' has no output 'FEATURE' (did you mean 'FEATURES'?)") in reason


def test_yaml_pipeline_unknown_key_has_line_column_and_hint(tmp_path: Path) -> None:
    """A misspelt key of a step is reported at its line and column with the right key."""
    path = pipeline_repo(tmp_path, {"p/config.yaml": YAML_HEAD + steps("""
            - model: preprocess
              input: {RAW: RAW}
          outputs:
            LABEL: preprocess.FEATURES
    """)}) / "p" / "config.yaml"
    from dagserve.dsl.compile import compile_config

    config = parse_config(path.read_text(), path=path, name="p")
    with pytest.raises(ConfigError) as info:
        compile_config(config, model_dir=path.parent, config_path=path)
    assert str(info.value) == (
        f"{path}:7:7: field 'pipeline.steps[0].input': unknown field 'input' (did you mean 'inputs'?)"
    )


# -- Python DSL pipelines --------------------------------------------------------------------------
DSL_HEAD = textwrap.dedent("""
    from dagserve import Pipeline

    pipeline = Pipeline()
    raw = pipeline.input("RAW", "UINT8", [-1])
""").lstrip("\n")


@pytest.mark.anyio
async def test_dsl_errors_point_at_the_pipeline_file(tmp_path: Path) -> None:
    """Errors of a pipeline.py name its own lines: a step's at the step() call, an output's at
    the output() call; never dagserve's from_python.py."""
    path = pipeline_repo(tmp_path, {
        "p/config.yaml": "backend: pipeline\n",
        "p/pipeline.py": DSL_HEAD + textwrap.dedent("""
            pre = pipeline.step("pre", "preprocss", inputs={"RAW": raw})
            pipeline.output("LABEL", "postprocess.LABEL", "BYTES", [1])
        """).lstrip("\n"),
    }) / "p" / "pipeline.py"
    reason = await load_reason(tmp_path, "p")
    assert f"{path}:5: pipeline 'p', step 'pre': unknown model 'preprocss' (did you mean 'preprocess'?)" in reason
    assert f"{path}:6: pipeline 'p': output 'LABEL' reads 'postprocess.LABEL', but no step is named 'postprocess'" in reason
    assert "from_python.py" not in reason and "builder.py" not in reason


@pytest.mark.parametrize(
    ("body", "line", "expected"),
    [
        ('pipeline.input("X", "UINT88", [1])\n', 5, "failed to import: ValueError: unknown datatype 'UINT88'"),
        ("pipeline.step(\n", 5, "failed to import: SyntaxError: "),
        ('def build():\n    return undefined_name\n\nbuild()\n', 6, "failed to import: NameError: "),
    ],
    ids=["bad-call", "syntax", "name"],
)
def test_dsl_import_failures_name_the_line(tmp_path: Path, body: str, line: int, expected: str) -> None:
    """A pipeline file that fails to import is reported at the line that failed (the deepest in
    the file, for an error raised in one of its functions)."""
    from dagserve.dsl.compile import compile_config

    path = write(tmp_path, {"p/config.yaml": "backend: pipeline\n", "p/pipeline.py": DSL_HEAD + body})
    path = path / "p" / "pipeline.py"
    config_path = path.parent / "config.yaml"
    config = parse_config(config_path.read_text(), path=config_path, name="p")
    with pytest.raises(ConfigError) as info:
        compile_config(config, model_dir=path.parent, config_path=config_path)
    assert str(info.value).startswith(f"{path}:{line}: {expected}"), str(info.value)


# -- the helpers themselves ------------------------------------------------------------------------
def test_pbtxt_index_counts_repeated_fields_as_pydantic_does() -> None:
    """Both spellings of a repeated field, list values and nested messages get their positions."""
    text = (
        'input [\n  { name: "A" dims: [ 1, 2 ] },\n  { name: "B" }\n]\n'
        "instance_group { count: 1 }\ninstance_group { kind: KIND_CPU }\n"
        "dynamic_batching { max_queue_delay_microseconds: 5 }\n"
    )
    index = pbtxt_index(text, model_config_pb2.ModelConfig.DESCRIPTOR)
    assert index[("input", 0, "dims", 1)] == (2, 26)
    assert index[("input", 1, "name")] == (3, 5)
    assert index[("instance_group", 1, "kind")] == (6, 18)
    assert index[("dynamic_batching", "max_queue_delay_microseconds")] == (7, 20)
    assert ("dynamic_batching", 0) not in index  # not repeated: no position


def test_yaml_index_and_hint() -> None:
    """YAML paths map to 1-based (line, column) of their keys; hints only for close names."""
    assert yaml_index("a:\n  - {b: 1}\n")[("a", 0, "b")] == (2, 6)
    assert did_you_mean("onnxrntime", ["python", "onnxruntime"]) == " (did you mean 'onnxruntime'?)"
    assert did_you_mean("zzz", ["python", "onnxruntime"]) == ""


# -- on the wire -----------------------------------------------------------------------------------
def test_a_misspelt_input_tensor_gets_a_hint_over_http() -> None:
    """A client sending a misspelt input name gets 400 naming it, the closest input and the list."""
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from dagserve.testing import serve_in_thread

    repo = Path(__file__).parent / "repos" / "triton_python"
    with serve_in_thread(repo, grpc=False, metrics=False, model_control_mode="explicit",
                         load_models=("add_sub",)) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        tensors = []
        for name in ("INPUT0", "INPTU1"):
            t = httpclient.InferInput(name, [4], "FP32")
            t.set_data_from_numpy(np.ones(4, np.float32))
            tensors.append(t)
        with pytest.raises(InferenceServerException) as info:
            client.infer("add_sub", tensors)
        client.close()
    assert info.value.status() == "400"
    assert "model 'add_sub' has no input 'INPTU1' (did you mean 'INPUT1'?) (its inputs: INPUT0, INPUT1)" in str(
        info.value.message()
    )
