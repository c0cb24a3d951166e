"""Shared fixtures: the anyio backend and the paths of the test repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

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
