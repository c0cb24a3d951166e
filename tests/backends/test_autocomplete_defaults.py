"""What Triton fills into a Python model's config after auto-complete, seen through the real
tritonclient over HTTP and gRPC: ``dynamic_batching.preferred_batch_size`` (``[max_batch_size]``
when none is given) and the instance group (one group when none is given; ``KIND_AUTO``
resolved to the kind the instance runs with, ``KIND_CPU``). ``--disable-auto-complete-config``
fills neither. Models in ``tests/repos/dropin_autocomplete/``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dagserve.testing import RunningServer, serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "dropin_autocomplete"
PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def completing() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False) as running:
        yield running


@pytest.fixture(scope="module")
def not_completing() -> Iterator[RunningServer]:
    with serve_in_thread(REPO, metrics=False, auto_complete_config=False) as running:
        yield running


def _config(running: RunningServer, protocol: str, model: str) -> dict[str, Any]:
    if protocol == "http":
        return httpclient.InferenceServerClient(running.http_url).get_model_config(model)  # type: ignore[no-any-return]
    client = grpcclient.InferenceServerClient(running.grpc_url)
    return client.get_model_config(model, as_json=True)["config"]  # type: ignore[no-any-return]


def _groups(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(name, kind, count) of each group; gRPC's JSON leaves out the proto defaults."""
    return [
        (g.get("name", ""), g.get("kind", "KIND_AUTO"), int(g.get("count", 0)))
        for g in config.get("instance_group", [])
    ]


def _preferred(config: dict[str, Any]) -> list[int]:
    return [int(s) for s in config["dynamic_batching"].get("preferred_batch_size", [])]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dynamic_batching_without_preferred_sizes_gets_max_batch_size(
    completing: RunningServer, protocol: str
) -> None:
    """The hook enables dynamic batching with max_batch_size 8 and no preferred sizes: the
    served config has preferred_batch_size [8], as Triton's NormalizeModelConfig fills it."""
    config = _config(completing, protocol, "hooked")
    assert int(config["max_batch_size"]) == 8
    assert _preferred(config) == [8]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_instance_group_gets_one_cpu_group_named_after_the_model(
    completing: RunningServer, protocol: str
) -> None:
    """No instance_group: one group named after the model, count 1, KIND_CPU; the instance
    really runs as that kind (its initialize args say CPU)."""
    assert _groups(_config(completing, protocol, "hooked")) == [("hooked", "KIND_CPU", 1)]
    if protocol == "http":
        tensor: Any = httpclient.InferInput("INPUT0", [1, 1], "INT32")
        client: Any = httpclient.InferenceServerClient(completing.http_url)
    else:
        tensor = grpcclient.InferInput("INPUT0", [1, 1], "INT32")
        client = grpcclient.InferenceServerClient(completing.grpc_url)
    tensor.set_data_from_numpy(np.array([[41]], np.int32))
    result = client.infer("hooked", [tensor])
    assert result.as_numpy("OUTPUT0").tolist() == [[42]]
    assert result.as_numpy("KIND").tolist() == [[b"CPU"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_given_values_are_kept_and_auto_kind_resolved(completing: RunningServer, protocol: str) -> None:
    """A model without a hook still gets Triton's defaults: its preferred sizes and count are
    kept, its KIND_AUTO group becomes KIND_CPU, its unnamed group <model>_0; both instances
    serve."""
    config = _config(completing, protocol, "explicit")
    assert _preferred(config) == [2, 4]
    assert _groups(config) == [("explicit_0", "KIND_CPU", 2)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_disabled_auto_complete_fills_nothing(not_completing: RunningServer, protocol: str) -> None:
    """auto_complete_config=False (--disable-auto-complete-config): the config is the one on
    disk: the hook is not called, no preferred size and no group are added, the kind stays
    KIND_AUTO."""
    hooked = _config(not_completing, protocol, "hooked")
    assert "dynamic_batching" not in hooked
    assert int(hooked.get("max_batch_size", 0)) == 0
    assert _groups(hooked) == []
    explicit = _config(not_completing, protocol, "explicit")
    assert _preferred(explicit) == [2, 4]
    assert [(kind, count) for _, kind, count in _groups(explicit)] == [("KIND_AUTO", 2)]


def test_disable_flag_on_the_command_line(tmp_path: Path) -> None:
    """`dagserve serve --disable-auto-complete-config`: /v2/models/explicit/config keeps
    KIND_AUTO and /v2/models/hooked/config has no instance group; without the flag both are
    filled."""

    def served(*flags: str) -> tuple[dict[str, Any], dict[str, Any]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port", "0",
             "--grpc-port", "-1", "--metrics-port", "-1", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
        )
        try:
            assert proc.stdout is not None
            address = ""
            for line in proc.stdout:
                match = re.search(r"HTTP service listening on (?:http://)?(\S+)", line)
                if match:
                    address = match.group(1)
                    break
            assert address, f"server exited (code {proc.poll()})"
            hooked, explicit = (
                httpx.get(f"http://{address}/v2/models/{m}/config", timeout=30).json() for m in ("hooked", "explicit")
            )
            return hooked, explicit
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)

    hooked, explicit = served("--disable-auto-complete-config")
    assert _groups(hooked) == [] and "dynamic_batching" not in hooked
    assert [kind for _, kind, _ in _groups(explicit)] == ["KIND_AUTO"]
    hooked, explicit = served()
    assert _groups(hooked) == [("hooked", "KIND_CPU", 1)] and _preferred(hooked) == [8]
    assert [kind for _, kind, _ in _groups(explicit)] == ["KIND_CPU"]
