"""Backend tests: skip ``gpu`` tests without CUDA, and build model repositories on the fly.

Models are built inside the tests (a torch module scripted, exported and converted to ONNX;
tree models trained on scikit-learn datasets), so no binary model files live in the tree.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [i for i in items if i.get_closest_marker("gpu") and HERE in Path(str(i.path)).parents]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine: bench/gpu_check.sh)")
        for item in gpu_items:
            item.add_marker(skip)


ModelWriter = Callable[..., Path]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty model repository."""
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def add_model(repo: Path) -> ModelWriter:
    """``add_model(name, config_text, files={"1/model.onnx": bytes_or_writer}, suffix="pbtxt")``
    writes a model directory; a writer is called with the target path."""

    def write(name: str, config: str, files: dict[str, bytes | Callable[[Path], object]] | None = None,
              suffix: str = "pbtxt") -> Path:
        model_dir = repo / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        (model_dir / f"config.{suffix}").write_text(config)
        for relative, content in (files or {}).items():
            target = model_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                content(target)
        return model_dir

    return write
