"""The Helm chart (deploy/helm/dagserve) and the manifests rendered from it: lint, render per
profile, every object valid for two Kubernetes versions (core kinds with kubernetes-validate,
CRD kinds with validators generated from their CRDs), the settings that matter, and
deploy/manifests/ in sync."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .tools import CHART, PROFILES, ROOT, by_kind, helm, node_modules, render, tool

KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")  # the chart's oldest supported minor (>=1.27 has no schema here) and a recent one
CRD_KINDS = {  # kind -> module of its validator in @kubernetes-models
    "ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    "PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
    "ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
}


def test_helm_lint_strict_every_profile() -> None:
    """``helm lint --strict`` passes with each profile's values."""
    for profile in PROFILES:
        out = helm("lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{profile}-values.yaml"))
        assert "0 chart(s) failed" in out


@pytest.mark.parametrize("profile", PROFILES)
def test_every_rendered_object_validates(profile: str) -> None:
    """Each object validates strictly against Kubernetes' schemas (two versions), or its CRD's."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]')")
    objects = render(profile)
    crds = [o for o in objects if o["kind"] in CRD_KINDS]
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{profile}: {obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes "
                            f"{version}: {exc.message} at {'.'.join(map(str, exc.path))}")
    assert crds, "every profile renders CRD objects (with the monitoring API present)"
    _validate_crd_objects(crds)


def _validate_crd_objects(objects: list[dict[str, Any]]) -> None:
    modules = node_modules()
    script = ["const objects = JSON.parse(process.argv[2]); const failures = [];"]
    for i, (kind, module) in enumerate(CRD_KINDS.items()):
        script.append(f'import {{ {kind} as K{i} }} from "{module}";')
    body = ["for (const o of objects) {", "  const K = {" + ", ".join(f"{k}: K{i}" for i, k in enumerate(CRD_KINDS)) + "}[o.kind];",
            "  try { new K(o).validate(); } catch (e) { failures.push(`${o.kind}: ${e.message}`); }", "}",
            "console.log(JSON.stringify(failures));"]
    source = "\n".join([line for line in script if line.startswith("import")] + [script[0]] + body)
    path = modules.parent / "validate_crds.mjs"  # beside node_modules, so imports resolve
    path.write_text(source)
    done = subprocess.run(check=False, args=["node", str(path), json.dumps(objects)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_a_crd_validator_rejects_a_broken_object() -> None:
    """The CRD validation can fail: a ServiceMonitor whose port is a number is refused."""
    modules = node_modules()
    path = modules.parent / "validate_one.mjs"
    path.write_text(f'import {{ ServiceMonitor }} from "{CRD_KINDS["ServiceMonitor"]}";\n'
                    'try { new ServiceMonitor(JSON.parse(process.argv[2])).validate(); console.log("valid"); }\n'
                    'catch (e) { console.log(e.message); }\n')
    broken = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
              "spec": {"selector": {}, "endpoints": [{"port": 8002}]}}
    done = subprocess.run(check=False, args=["node", str(path), json.dumps(broken)], capture_output=True, text=True, timeout=60)
    assert "port must be string" in done.stdout


def test_deployment_probes_ports_and_drain() -> None:
    """Probes on /v2/health/ready and /live, the three named ports, gRPC marked h2c, a grace
    period covering the preStop pause plus --exit-timeout-secs, non-root."""
    kinds = by_kind(render("default"))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert "--exit-timeout-secs=30" in container["args"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    ports = {p["name"]: p for p in kinds["Service"]["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert "HorizontalPodAutoscaler" not in kinds and "ScaledObject" not in kinds


def test_monitoring_objects_only_when_the_api_exists() -> None:
    """ServiceMonitor and PrometheusRule render when the cluster serves monitoring.coreos.com/v1."""
    assert {"ServiceMonitor", "PrometheusRule"} <= set(by_kind(render("default")))
    assert not {"ServiceMonitor", "PrometheusRule"} & set(by_kind(render("default", monitoring=False)))


def test_gpu_profile() -> None:
    """GPUs in the limits, node selector, tolerations, served names and a longer drain."""
    kinds = by_kind(render("gpu"))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":0.1.0-cuda")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "--model-alias=detect=detector" in container["args"] and "--exit-timeout-secs=60" in container["args"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 60


def test_autoscaling_profiles() -> None:
    """hpa: autoscaling/v2 on the per-pod queue time per request; keda: a Prometheus trigger on
    the same figure; the Deployment leaves replicas to the autoscaler."""
    kinds = by_kind(render("hpa"))
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "dagserve_queue_time_per_request_us"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "20000"}
    assert "replicas" not in kinds["Deployment"]["spec"]
    recorded = [r for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"] if "record" in r]
    assert [r["record"] for r in recorded] == ["dagserve_queue_time_per_request_us"]
    keda = by_kind(render("keda"))["ScaledObject"]
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    assert 'nv_inference_queue_duration_us{job="dagserve", model=~"detector|classifier"}' in trigger["metadata"]["query"]


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "autoscaling.mode=sometimes"], "value must be one of 'none', 'hpa', 'keda'"),
    (["--set", "sever.logLevel=info"], "additional properties 'sever' not allowed"),
    (["--set", "terminationGracePeriodSeconds=10"], "below preStopSleepSeconds + server.exitTimeoutSecs (35)"),
    (["--set", "modelRepository.mountPath=models"], "/modelRepository/mountPath"),
])
def test_bad_values_fail_the_render_naming_them(values: list[str], message: str) -> None:
    """values.schema.json and the template checks refuse bad values with a message naming them."""
    done = subprocess.run(check=False, args=[tool("helm"), "template", "x", str(CHART), *values], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert message in done.stderr


def test_plain_manifests_are_in_sync_with_the_chart(tmp_path: Path) -> None:
    """deploy/manifests/ is exactly what scripts/render-manifests.sh renders now."""
    done = subprocess.run(check=False, args=["bash", str(ROOT / "scripts" / "render-manifests.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HELM": tool("helm")})
    assert done.returncode == 0, done.stderr
    committed = ROOT / "deploy" / "manifests"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in committed.iterdir())
    for rendered in tmp_path.iterdir():
        assert rendered.read_text() == (committed / rendered.name).read_text(), (
            f"deploy/manifests/{rendered.name} differs from the chart: run scripts/render-manifests.sh")
