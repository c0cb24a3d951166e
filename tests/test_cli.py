"""The command line's offline tools: ``dagserve validate`` checks a whole repository without
serving it; ``dagserve graph`` draws a pipeline as Mermaid, Graphviz text, SVG or PNG."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from dagserve.cli import main
from dagserve.validation import validate_repository

REPOS = Path(__file__).parent / "repos"
PIPELINES = REPOS / "pipelines"
EXAMPLES = Path(__file__).parent.parent / "examples" / "pipelines"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


DOUBLE = {
    "double/config.yaml": """
        backend: python
        inputs: [{name: X, datatype: FP32, shape: [-1]}]
        outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """,
    "double/1/model.py": "def infer(inputs):\n    return {'Y': inputs['X'] * 2}\n",
}


# -- validate ------------------------------------------------------------------------------------
def test_validate_reports_every_broken_pipeline_once_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    """Every broken_* model of the pipelines repository gets its errors, each on its own line
    naming the file and step; every other model is ok; the exit status is 1."""
    status, lines, _ = run(capsys, "validate", str(PIPELINES))
    assert status == 1
    errors = [line for line in lines if line.startswith("error: ")]
    failed = {line.split(": ")[1] for line in errors}
    broken = {p.name for p in PIPELINES.iterdir() if p.name.startswith("broken_")}
    assert failed == broken
    expected = [
        (
            "error: broken_member: ",
            "broken_member/config.yaml:7: pipeline 'broken_member', step 'second': "
            + "unknown model 'no_such_model'",
        ),
        ("error: broken_cycle: ", "steps form a cycle: a -> b -> a"),
        ("error: broken_batch: ", "contains model 'bscale' which only allows maximum batch size to be 8"),
        (
            "error: broken_unwritten: ",
            "output 'Y' for ensemble 'broken_unwritten' is not written by any step",
        ),
        ("error: broken_failed_member: ", "model 'broken_model' is not ready: "),
        ("error: broken_model: ", "broken_model/1/model.py:1: ImportError: weights not found"),
    ]
    for prefix, text in expected:
        assert any(line.startswith(prefix) and text in line for line in errors), text
    # Two problems of one pipeline: two lines, not one joined message.
    shapes = [line for line in errors if line.startswith("error: broken_shapes: ")]
    assert len(shapes) == 2 and "datatype mismatch on 'RAW'" in shapes[0] and "shape mismatch" in shapes[1]
    syntax = [line for line in errors if line.startswith("error: broken_syntax: ")]
    assert any("'pipeline.steps[1].modle': unknown field" in line for line in syntax)
    assert "ok: nested (pipeline, 1 step)" in lines  # checked against the inner pipeline's outputs
    assert "ok: classify_dsl (pipeline, 3 steps)" in lines
    assert lines[-1] == "19 models and 22 pipelines checked: 33 ok, 8 with errors; 10 errors, 0 warnings"


def test_validate_reports_config_errors_with_file_and_field(capsys: pytest.CaptureFixture[str]) -> None:
    """Broken native YAML configs are reported with their file and field; the good ones are ok."""
    status, lines, _ = run(capsys, "validate", str(REPOS / "native_yaml"))
    assert status == 1
    errors = sorted(line for line in lines if line.startswith("error: "))
    assert len(errors) == 3
    assert (
        errors[0].startswith("error: broken_bad_type: ")
        and "config.yaml:2:1: field 'max_batch_size'" in errors[0]
    )
    assert "field 'inputs[0].data_type': required field is missing" in errors[1]
    assert "field 'max_batch_sise': unknown field" in errors[2]
    assert {"ok: add_sub_native (python, version 1)", "ok: scaler (python, version 1)"} <= set(lines)


def test_validate_a_missing_repository_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A path that is not a directory is a usage error, not a model error."""
    status, lines, _ = run(capsys, "validate", str(tmp_path / "nowhere"))
    assert status == 2 and "is not a directory" in lines[0]


def test_validate_reports_warnings_and_still_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Warnings the checks log (an unused pipeline input) are printed per model; exit 0."""
    repo = write(
        tmp_path,
        {
            **DOUBLE,
            "p/config.yaml": """
            backend: pipeline
            inputs: [{name: X, datatype: FP32, shape: [-1]}, {name: UNUSED, datatype: FP32, shape: [1]}]
            outputs: [{name: Y, datatype: FP32, shape: [-1]}]
            pipeline:
              steps: [{name: d, model: double, inputs: {X: X}}]
              outputs: {Y: d.Y}
        """,
        },
    )
    status, lines, _ = run(capsys, "validate", str(repo))
    assert status == 0
    assert "warning: p: pipeline 'p': input 'UNUSED' is not read by any step" in lines
    assert lines[-1].endswith("0 errors, 1 warning")


def test_validate_catches_what_only_loading_shows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A Python file without a model form, a framework model without its file, a missing
    version directory, an unknown backend, and pipelines that call each other are all errors."""
    repo = write(
        tmp_path,
        {
            **DOUBLE,
            "formless/config.yaml": "backend: python\n",
            "formless/1/model.py": "VALUE = 1\n",
            "no_file/config.yaml": """
            backend: onnxruntime
            inputs: [{name: X, datatype: FP32, shape: [-1]}]
            outputs: [{name: Y, datatype: FP32, shape: [-1]}]
        """,
            "no_file/1/README": "the model.onnx is missing\n",
            "no_version/config.yaml": "backend: python\n",
            "odd_backend/config.yaml": "backend: cobol\n",
            "odd_backend/1/model.cbl": "\n",
            "ping/config.yaml": """
            backend: pipeline
            inputs: [{name: X, datatype: FP32, shape: [-1]}]
            pipeline: {steps: [{name: s, model: pong, inputs: {X: X}}], outputs: {Y: s.Y}}
        """,
            "pong/config.yaml": """
            backend: pipeline
            inputs: [{name: X, datatype: FP32, shape: [-1]}]
            pipeline: {steps: [{name: s, model: ping, inputs: {X: X}}], outputs: {Y: s.Y}}
        """,
        },
    )
    status, lines, _ = run(capsys, "validate", str(repo))
    assert status == 1
    text = "\n".join(lines)
    assert "error: formless: " in text and "defines neither a TritonPythonModel class" in text
    assert "error: no_file: " in text and "no model file (expected model.onnx)" in text
    assert "error: no_version: " in text and "no version directory to serve" in text
    assert "error: odd_backend: " in text and "unknown backend 'cobol'" in text
    assert "pipelines call each other: ping -> pong -> ping" in text
    assert "ok: double (python, version 1)" in lines


def test_validate_leaves_no_model_modules_behind(tmp_path: Path) -> None:
    """Two models importing a helper of the same name each get their own, and neither stays
    in sys.modules after the check."""
    files = {}
    for name, value in (("a", 1), ("b", 2)):
        files[f"{name}/config.yaml"] = "backend: python\n"
        files[f"{name}/1/helpers_dsv.py"] = f"VALUE = {value}\n"
        files[f"{name}/1/model.py"] = (
            f"import helpers_dsv\nassert helpers_dsv.VALUE == {value}, helpers_dsv.VALUE\n"
            "def infer(inputs):\n    return {}\n"
        )
    report = validate_repository(write(tmp_path, files))
    assert report.ok, [str(f) for f in report.findings]
    assert "helpers_dsv" not in sys.modules


def test_validate_types_pipelines_from_an_auto_completed_onnx_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An ONNX model whose config declares no tensors is completed from its file, and pipelines
    calling it are checked against the completed inputs and outputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "TWO"], ["Y"])],
        "scale",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor("TWO", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pipeline = """
        backend: pipeline
        inputs: [{{name: X, datatype: {}, shape: [2, 3]}}]
        pipeline: {{steps: [{{name: s, model: scale, inputs: {{X: X}}}}], outputs: {{Y: s.Y}}}}
    """
    repo = write(
        tmp_path,
        {
            "scale/config.yaml": "backend: onnxruntime\n",
            "good/config.yaml": pipeline.format("FP32"),
            "bad/config.yaml": pipeline.format("INT32"),
        },
    )
    (repo / "scale" / "1").mkdir()
    onnx.save(model, str(repo / "scale" / "1" / "model.onnx"))
    status, lines, _ = run(capsys, "validate", str(repo))
    assert status == 1
    assert "ok: good (pipeline, 1 step)" in lines and "ok: scale (onnxruntime, version 1)" in lines
    bad = [line for line in lines if line.startswith("error: bad: ")]
    assert len(bad) == 1 and "pipeline input 'X' is INT32, but model 'scale' input 'X' expects FP32" in bad[0]


# -- graph ---------------------------------------------------------------------------------------
def test_graph_mermaid_has_nodes_and_typed_edges(capsys: pytest.CaptureFixture[str]) -> None:
    """A three-step chain: input, steps with model and version, outputs (one typed from its
    step), and edges labelled with tensor name, datatype and shape."""
    status, lines, _ = run(capsys, "graph", str(EXAMPLES), "iris", "--format", "mermaid")
    assert status == 0
    assert lines[0] == "flowchart LR"
    for expected in (
        '  in_0(["FEATURES<br/>FP32 [-1, 4]"])',
        '  step_0["standardize<br/>function standardize"]',
        '  step_1["classify<br/>model iris_logreg (latest)"]',
        '  step_2["label<br/>function label"]',
        '  out_0(["LABEL<br/>BYTES [-1, 1]"])',
        '  out_2(["PROBS<br/>FP32 [-1, 3]"])',
        '  in_0 -->|"FEATURES: FP32 [-1, 4]"| step_0',
        '  step_0 -->|"SCALED: FP32 [-1, 4]"| step_1',
        '  step_1 -->|"PROBS: FP32 [-1, 3]"| step_2',
        '  step_2 -->|"LABEL: BYTES [-1, 1]"| out_0',
        '  step_2 -->|"SCORE: FP32 [-1, 1]"| out_1',
        '  step_1 -->|"PROBS: FP32 [-1, 3]"| out_2',
    ):
        assert expected in lines
    assert sum("-->" in line for line in lines) == 6


def test_graph_dot_marks_switch_when_map_and_loop(capsys: pytest.CaptureFixture[str]) -> None:
    """Switch cases hang off a diamond, a `when` is written on its step with a dashed edge from
    its subject, alternatives are dashed, a map and a loop are marked, a carry loops back."""
    status, lines, _ = run(capsys, "graph", str(PIPELINES), "routed", "--format", "dot")
    assert status == 0
    text = "\n".join(lines)
    assert 'switch_0 [label="switch params.mode", shape=diamond' in text
    assert "switch_0 -> step_0 [label=\"== 'double'\"];" in text
    assert 'switch_0 -> step_1 [label="default"];' in text
    assert 'step_2 [label="flag\\nmodel checker (latest)\\nwhen X > 100"' in text
    assert 'in_0 -> step_2 [label="X (when)", style=dashed];' in text
    assert 'step_0 -> step_2 [label="Y as X: FP32 [-1]", style=dashed];' in text
    _, mapped, _ = run(capsys, "graph", str(PIPELINES), "mapped", "-f", "dot")
    assert any("map over P" in line for line in mapped)
    assert '  step_0 -> step_1 [label="PAIRS as P: FP32 [-1, 2]"];' in mapped
    _, looped, _ = run(capsys, "graph", str(PIPELINES), "looped", "-f", "dot")
    assert any("loop ≤ 10, until count.Y >= 5" in line for line in looped)
    assert '  step_0 -> step_0 [label="Y as X: INT32 [1]", style=dashed];' in looped


def test_graph_merges_parallel_reads_and_escapes_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    """Three tensors between two steps make one arrow with three lines; a condition's '>' is
    written as a Mermaid entity, so the label stays text."""
    status, lines, _ = run(capsys, "graph", str(EXAMPLES), "anomaly")
    assert status == 0
    assert '  step_1 -->|"MEDIAN: FP32 [1]<br/>ZMAX: FP32 [1]<br/>PEAK: INT32 [1]"| step_2' in lines
    assert '  step_1 -.->|"ZMAX (when)"| step_2' in lines
    assert '  step_2["report<br/>model anomaly_report (latest)<br/>when stats.ZMAX #gt; 3.5"]' in lines
    assert '  out_2(["REPORT<br/>BYTES [1]<br/>optional"])' in lines


@needs_dot
@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml")])
def test_graph_renders_png_and_svg_with_graphviz(tmp_path: Path, fmt: str, magic: bytes) -> None:
    """With Graphviz installed, -o FILE gets a real PNG or SVG."""
    out = tmp_path / f"routed.{fmt}"
    assert main(["graph", str(PIPELINES), "routed", "--format", fmt, "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_graph_without_graphviz_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a `dot` program, png fails with a message naming graphviz and the text formats."""
    monkeypatch.setenv("PATH", str(tmp_path))
    status, _, err = run(
        capsys, "graph", str(PIPELINES), "routed", "-f", "png", "-o", str(tmp_path / "x.png")
    )
    assert status == 1
    assert "apt-get install graphviz" in err and "--format dot or --format mermaid" in err
    assert not (tmp_path / "x.png").exists()


def test_graph_refuses_models_and_broken_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    """A plain model or an unknown name is a usage error (2); a broken pipeline prints its
    errors and exits 1."""
    status, _, err = run(capsys, "graph", str(PIPELINES), "double")
    assert status == 2 and "'double' is a python model, not a pipeline" in err
    status, _, err = run(capsys, "graph", str(PIPELINES), "nothing_here")
    assert status == 2 and "no model 'nothing_here'" in err
    status, out, err = run(capsys, "graph", str(PIPELINES), "broken_cycle")
    assert status == 1 and out == []
    assert "error: broken_cycle: " in err and "steps form a cycle" in err
