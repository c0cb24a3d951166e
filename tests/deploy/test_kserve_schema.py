"""deploy/kserve/ against KServe's own schema: the models the KServe Python SDK generates from
KServe's OpenAPI spec (the Go types its CRDs come from), walked by kserve_schema.py in
.tools/kserve-venv (scripts/fetch-deploy-tools.sh). No registry here carries the CRD YAML
itself; these models are the nearest published form of it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .tools import ROOT, kserve_python

CHECK = Path(__file__).with_name("kserve_schema.py")


def _check(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=[kserve_python(), str(CHECK)], input=json.dumps(objects), capture_output=True,
                          text=True, timeout=120)


def test_the_kserve_objects_validate_against_kserve_schema() -> None:
    """The ClusterServingRuntime and the example InferenceService: every field known to KServe's
    schema, of its type, the required ones present."""
    objects = [o for path in sorted((ROOT / "deploy" / "kserve").glob("*.yaml")) for o in yaml.safe_load_all(path.read_text())]
    assert {o["kind"] for o in objects} == {"ClusterServingRuntime", "InferenceService"}
    done = _check(objects)
    assert done.returncode == 0 and done.stdout.strip() == f"valid {len(objects)}", done.stdout + done.stderr


def test_the_kserve_schema_check_rejects_broken_objects() -> None:
    """A misspelt field, a string port, a string boolean and a runtime without containers are
    each reported with their path."""
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "cluster-serving-runtime.yaml").read_text())
    spec = runtime["spec"]
    spec["protocolVersion"] = spec.pop("protocolVersions")
    spec["supportedModelFormats"][0]["autoSelect"] = "true"
    spec["containers"][0]["ports"][0]["containerPort"] = "8080"
    empty = {**runtime, "metadata": {"name": "empty"}, "spec": {"supportedModelFormats": spec["supportedModelFormats"][1:]}}
    done = _check([runtime, empty])
    assert done.returncode == 1, done.stdout + done.stderr
    problems = done.stdout.splitlines()
    for expected in ("ClusterServingRuntime/kserve-dagserve.spec.protocolVersion: unknown field",
                     "ClusterServingRuntime/kserve-dagserve.spec.supportedModelFormats[0].autoSelect: expected bool",
                     "ClusterServingRuntime/kserve-dagserve.spec.containers[0].ports[0].containerPort: expected int",
                     "ClusterServingRuntime/empty.spec: Invalid value for `containers`, must not be `None`"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
