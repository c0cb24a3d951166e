"""A bounded, derandomized share of bench/fuzz_wire.py in CI: generated HTTP bodies and gRPC
messages (real model names, forged shapes, wrong content fields, truncated binary sections,
bogus headers, garbage) never get a 5xx / INTERNAL, and the server stays live."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("hypothesis")

from dagserve.testing import serve_in_thread

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fuzz_wire.py"


def _fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dagserve_bench_fuzz_wire", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error() -> None:
    """300 hypothesis cases per protocol (the same every run) against a live server."""
    fuzz = _fuzz_module()
    with serve_in_thread(fuzz.REPO, metrics=False) as running:
        target = fuzz.Target(running.http_url, running.grpc_url)
        try:
            fuzz.campaign(target, 300, derandomize=True)
        finally:
            target.close()
        assert target.http_count >= 300 and target.grpc_count >= 300


def test_mutants_never_get_a_server_error() -> None:
    """A few thousand cheap mutants of hypothesis cases, seeded, against a live server."""
    fuzz = _fuzz_module()
    with serve_in_thread(fuzz.REPO, metrics=False) as running:
        target = fuzz.Target(running.http_url, running.grpc_url)
        try:
            fuzz.long_campaign(target, cases=2000, seeds=50, seed=1)
        finally:
            target.close()
        assert target.http_count == target.grpc_count == 2050
