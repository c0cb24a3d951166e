"""The one importer of user code (backends/_imports.py), used by python, pytorch and pipeline files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dagserve.backends._imports import import_file
from dagserve.dsl.from_python import load_pipeline_file
from dagserve.errors import ConfigError
from dagserve.repository.config import ModelConfig


def _model(root: Path, name: str, value: int) -> Path:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    (folder / "helper_dsimp.py").write_text(f"VALUE = {value}\n")
    path = folder / "model.py"
    path.write_text("import helper_dsimp\nVALUE = helper_dsimp.VALUE\n")
    return path


def test_each_file_gets_its_own_helper_and_none_stays_behind(tmp_path: Path) -> None:
    """Two files importing a helper of the same name each get their own copy; neither the
    helper nor the file's directory is left in sys.modules / sys.path."""
    first = import_file(_model(tmp_path, "a", 1), "test_a")
    second = import_file(_model(tmp_path, "b", 2), "test_b")
    assert (first.VALUE, second.VALUE) == (1, 2)
    assert "helper_dsimp" not in sys.modules
    assert not any(p.startswith(str(tmp_path)) for p in sys.path)


def test_a_failing_file_raises_and_leaves_sys_path_clean(tmp_path: Path) -> None:
    """What the file raises reaches the caller, and its directory leaves sys.path anyway."""
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError, match="boom"):
        import_file(path, "test_broken")
    assert str(tmp_path) not in sys.path


def test_pipeline_files_forget_their_helpers_too(tmp_path: Path) -> None:
    """A pipeline_file goes through the same importer: its helper module is forgotten, and an
    import failure is a ConfigError naming the file."""
    model_dir = tmp_path / "pipe"
    model_dir.mkdir()
    (model_dir / "helper_dspipe.py").write_text("MODEL = 'm'\n")
    (model_dir / "pipeline.py").write_text(
        "import helper_dspipe\n"
        "from dagserve.dsl import Pipeline\n"
        "p = Pipeline('pipe')\n"
        "x = p.input('X', 'FP32', [-1])\n"
        "p.output('Y', p.step('s', helper_dspipe.MODEL, inputs={'X': x})['Y'])\n"
        "pipeline = p\n"
    )
    config = ModelConfig(name="pipe", backend="pipeline", pipeline_file="pipeline.py")
    spec = load_pipeline_file(config, model_dir=model_dir)
    assert spec.name == "pipe"
    assert "helper_dspipe" not in sys.modules
    (model_dir / "pipeline.py").write_text("import no_such_module_dsimp\n")
    with pytest.raises(ConfigError, match=r"pipeline\.py:1: failed to import: ModuleNotFoundError"):
        load_pipeline_file(config, model_dir=model_dir)
