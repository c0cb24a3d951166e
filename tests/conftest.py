"""Shared fixtures: the anyio backend, the paths of the test repositories, the gate of the
``slow`` test model, and one worker process for every server the tests start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dagserve.testing import FileGate

REPOS = Path(__file__).parent / "repos"

@pytest.fixture(autouse=True, scope="session")
def one_worker_process() -> Iterator[None]:
    """Servers the tests start as ``dagserve serve`` subprocesses (they inherit this environment)
    run as one process, as ``--workers 1``: they test the engine and the frontends, whose
    answers must not depend on the machine's core count (``serve``'s default is ``auto``).
    tests/test_workers.py tests the workers with ``--workers N``, and the default itself with
    the variable removed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSERVE_WORKERS", "1")
        yield

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
