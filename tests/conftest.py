"""Shared fixtures: the anyio backend, the paths of the test repositories, and the gate of the
``slow`` test model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagserve.testing import FileGate

REPOS = Path(__file__).parent / "repos"

@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

@pytest.fixture
def triton_repo() -> Path:
    """A Triton-style repository of config.pbtxt + model.py Python models."""
    return REPOS / "triton_python"

@pytest.fixture
def native_repo() -> Path:
    """A repository of native config.yaml models, three of them deliberately broken."""
    return REPOS / "native_yaml"

@pytest.fixture
def slow_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileGate]:
    """The gate of the ``slow`` test model (SLEEP_MS = -1 holds); released at teardown, so a
    failing test never leaves a held call behind."""
    gate = FileGate(tmp_path / "slow_gate")
    monkeypatch.setenv("SLOW_MODEL_GATE", str(gate.path))
    try:
        yield gate
    finally:
        gate.release()
