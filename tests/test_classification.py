"""dagserve.classification and the labels files, without a server: Triton's value formatting
and shapes, ordering of ties and NaN, every classifiable datatype, and the parameter checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dagserve import ConfigError, InvalidInputError
from dagserve.classification import (
    CLASSIFIABLE,
    MAX_CLASSIFICATION_ELEMENTS,
    check_output_parameters,
    classify,
)
from dagserve.repository.config import ModelConfig
from dagserve.repository.labels import load_labels, read_labels
from dagserve.repository.loader import parse_config
from dagserve.types import DataType


def texts(array: np.ndarray) -> list[Any]:
    return [v.decode() for v in array.ravel()]


def test_floats_print_like_cpp_to_string() -> None:
    """FP32/FP64 values print as std::to_string does (%f: six decimals), negative and large too."""
    x = np.array([0.7, -2.5, 1e20, 1 / 3], dtype=np.float32)
    assert texts(classify(x, DataType.FP32, 4, batched=False)) == [
        "100000002004087734272.000000:2", "0.700000:0", "0.333333:3", "-2.500000:1",
    ]
    assert texts(classify(np.array([0.1, 0.2]), DataType.FP64, 1, batched=False)) == ["0.200000:1"]


@pytest.mark.parametrize("datatype", sorted((d for d in CLASSIFIABLE if d.value[0] in "UI"), key=lambda d: d.value))
def test_every_integer_type_prints_plain_integers(datatype: DataType) -> None:
    """Each integer datatype, at its extremes, prints as a plain integer, largest first."""
    info = np.iinfo(datatype.numpy_dtype)
    x = np.array([0, info.max, info.min, 1], dtype=datatype.numpy_dtype)
    got = texts(classify(x, datatype, 4, batched=False))
    expected = sorted([(0, 0), (int(info.max), 1), (int(info.min), 2), (1, 3)], key=lambda p: (-p[0], p[1]))
    assert got == [f"{v}:{i}" for v, i in expected]


def test_ties_keep_index_order_and_nan_ranks_last() -> None:
    """Equal values come in index order; NaN below every number, -inf included."""
    x = np.array([0.5, np.nan, 0.5, -np.inf, 0.5], dtype=np.float32)
    assert texts(classify(x, DataType.FP32, 5, batched=False)) == [
        "0.500000:0", "0.500000:2", "0.500000:4", "-inf:3", "nan:1",
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint64, np.int64])
def test_top_k_matches_a_full_sort_with_ties_and_nan(dtype: type) -> None:
    """Against a plain sort by (value descending, index ascending, NaN last), on random rows
    full of ties, for small and large k (the partition path and the full sort)."""
    rng = np.random.default_rng(7)
    datatype = DataType.from_numpy(np.dtype(dtype))
    for _ in range(30):
        rows = rng.integers(0, 6, size=(5, 40)).astype(dtype)
        if datatype in (DataType.FP32, DataType.FP64):
            rows[rng.random(rows.shape) < 0.1] = np.nan
        for k in (1, 3, 9, 40):
            got = classify(rows, datatype, k, batched=True)
            for row, result in zip(rows.tolist(), got.tolist()):
                ranked = sorted(range(len(row)), key=lambda i: (row[i] != row[i], -row[i] if row[i] == row[i] else 0, i))
                assert [int(v.split(b":")[1]) for v in result] == ranked[:k]


def test_batched_items_flatten_every_dimension_after_the_batch() -> None:
    """A batched [2, 2, 3] output: each item's 6 elements, flat indices; shape [2, k]."""
    x = np.arange(12, dtype=np.int64).reshape(2, 2, 3)
    out = classify(x, DataType.INT64, 2, batched=True, labels=[str(i) for i in range(6)])
    assert out.shape == (2, 2)
    assert texts(out) == ["5:5:5", "4:4:4", "11:5:5", "10:4:4"]


def test_shapes_for_empty_and_scalar_tensors() -> None:
    """An empty batch gives [0, min(k, n)]; a scalar of an unbatched model is one class."""
    assert classify(np.zeros((0, 3), np.float32), DataType.FP32, 2, batched=True).shape == (0, 2)
    assert texts(classify(np.float64(2.5), DataType.FP64, 3, batched=False)) == ["2.500000:0"]


def test_labels_empty_or_missing_give_value_and_index_only() -> None:
    """A class whose label line is empty, or past the end of the file, has no ":label"."""
    out = classify(np.array([3, 2, 1], np.int32), DataType.INT32, 3, batched=False, labels=["a", ""])
    assert texts(out) == ["3:0:a", "2:1", "1:2"]


def test_an_item_past_the_element_limit_is_refused() -> None:
    """More than 1,000,000 elements per item is an InvalidInputError naming the output."""
    x = np.zeros(MAX_CLASSIFICATION_ELEMENTS + 1, np.uint8)
    with pytest.raises(InvalidInputError, match="output 'P': classification output tensor too large"):
        classify(x, DataType.UINT8, 1, batched=False, name="P")


@pytest.mark.parametrize(
    ("params", "datatype", "message"),
    [
        ({"classification": 0}, DataType.FP32, "'classification' must be a positive integer"),
        ({"classification": "2"}, DataType.FP32, "got '2' (a string)"),
        ({"classification": False}, DataType.FP32, "got False"),
        ({"classification": 2}, DataType.FP16, "its datatype is FP16"),
        ({"classification": 2}, DataType.BF16, "its datatype is BF16"),
        ({"classification": 2, "shared_memory_region": "r"}, DataType.FP32, "both 'shared_memory_region'"),
        ({"top_k": 2}, DataType.FP32, "unknown parameter 'top_k'"),
    ],
)
def test_check_output_parameters_refuses(params: dict[str, Any], datatype: DataType, message: str) -> None:
    """Each refusal names the model and the output, and says why."""
    with pytest.raises(InvalidInputError) as info:
        check_output_parameters("model 'm'", "P", params, datatype)
    assert str(info.value).startswith("model 'm': output 'P'")
    assert message in str(info.value)


def test_check_output_parameters_accepts_known_ones() -> None:
    """binary_data alone, and a positive count on a classifiable output, pass."""
    check_output_parameters("model 'm'", "P", {"binary_data": True}, DataType.BYTES)
    check_output_parameters("model 'm'", "P", {"binary_data": False, "classification": 2**40}, DataType.UINT8)


def test_read_labels_follows_getline(tmp_path: Path) -> None:
    """One label per line: a final newline adds none, empty lines are kept, CRLF ends are clean."""
    path = tmp_path / "l.txt"
    path.write_bytes(b"cat\r\n\ndog\nbird")
    assert read_labels(path) == ("cat", "", "dog", "bird")
    path.write_bytes(b"a\n")
    assert read_labels(path) == ("a",)
    path.write_bytes(b"")
    assert read_labels(path) == ()


def test_load_labels_errors_name_the_output_and_file(tmp_path: Path) -> None:
    """Missing, not UTF-8, or leaving the model directory: a ConfigError naming output and file."""
    config = ModelConfig.model_validate(
        {"backend": "python", "output": [{"name": "P", "data_type": "FP32", "dims": [2], "label_filename": "l.txt"}]}
    )
    with pytest.raises(ConfigError, match=r"model 'm': output 'P' label_filename: .*l\.txt does not exist"):
        load_labels(config, tmp_path, owner="model 'm'")
    (tmp_path / "l.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_labels(config, tmp_path, owner="model 'm'")
    (tmp_path / "l.txt").write_text("x\ny\n")
    assert load_labels(config, tmp_path, owner="model 'm'") == {"P": ("x", "y")}
    outside = config.model_copy(update={"output": (config.output[0].model_copy(update={"label_filename": "../l.txt"}),)})
    with pytest.raises(ConfigError, match="must not contain '..'"):
        load_labels(outside, tmp_path, owner="model 'm'")


def test_label_filename_loads_on_outputs_and_is_refused_on_inputs() -> None:
    """config.pbtxt with an output label_filename parses; a YAML input with one is refused."""
    config = parse_config(
        'backend: "python"\noutput [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]\n',
        path=Path("m/config.pbtxt"), name="m",
    )
    assert config.output[0].label_filename == "labels.txt"
    with pytest.raises(ConfigError, match="input 'X': label_filename is for outputs"):
        parse_config(
            "backend: python\ninputs: [{name: X, datatype: FP32, shape: [1], label_filename: l.txt}]\n",
            path=Path("m/config.yaml"), name="m",
        )


def test_validate_cli_reports_a_missing_labels_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dagserve validate` reads the labels files as the server does: a missing one exits 1
    naming the model, the output and the file."""
    from dagserve.cli import main

    model = tmp_path / "clf"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("def infer(inputs):\n    return {'Y': inputs['X']}\n")
    (model / "config.yaml").write_text(
        "backend: python\ninputs: [{name: X, datatype: FP32, shape: [3]}]\n"
        "outputs: [{name: Y, datatype: FP32, shape: [3], label_filename: labels.txt}]\n"
    )
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "model 'clf': output 'Y' label_filename:" in out.out + out.err
    assert "labels.txt does not exist" in out.out + out.err
    (model / "labels.txt").write_text("a\nb\nc\n")
    assert main(["validate", str(tmp_path)]) == 0
