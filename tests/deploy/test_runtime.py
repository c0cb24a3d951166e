"""The command lines the deployment kit runs — the image's ENTRYPOINT + CMD and HEALTHCHECK, the
chart's container, the KServe runtime's container — started here, each on a host of its own
(a network namespace, so the declared ports are free), answer inference over HTTP and gRPC and
metrics on the ports they declare.

The repository path of each (/models, /mnt/models) is replaced by examples/pipelines, and
``dagserve`` by this checkout's ``python -m dagserve.cli``: what runs is the rest of the line,
unchanged. The image itself is not built here (no container engine runs on this machine)."""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from .netns import Host, network
from .tools import by_kind, render

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "pipelines"
KSERVE = ROOT / "deploy" / "kserve"
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]], dtype=np.float32)


def _containerfile() -> tuple[list[str], list[str]]:
    """ENTRYPOINT + CMD, and the HEALTHCHECK command, of deploy/Containerfile."""
    text = (ROOT / "deploy" / "Containerfile").read_text().replace("\\\n", " ")
    found = {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^(ENTRYPOINT|CMD) (\[.*\])$", text, re.MULTILINE)
             if not m.group(0).startswith("CMD [\"python3\"")}
    health = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE)
    assert health is not None
    return found["ENTRYPOINT"] + found["CMD"], json.loads(health.group(1))


def _ports(argv: list[str]) -> dict[str, int]:
    """The declared ports: the flags on the line, else dagserve's defaults (as the image does)."""
    ports = {"http": 8000, "grpc": 8001, "metrics": 8002}
    for arg in argv:
        m = re.fullmatch(r"--(http|grpc|metrics)-port=(\d+)", arg)
        if m:
            ports[m.group(1)] = int(m.group(2))
    return ports


def _local(argv: list[str]) -> list[str]:
    assert argv[0] == "dagserve", argv
    out = []
    for arg in argv[1:]:
        m = re.fullmatch(r"--model-repository=(/.*)", arg)
        out.append(f"--model-repository={EXAMPLES}" if m else arg)
    assert f"--model-repository={EXAMPLES}" in out, f"no --model-repository=/... in {argv}"
    return out[1:] if out[0] == "serve" else out


def _serve_and_check(host: Host, argv: list[str], env: dict[str, str], tmp: Path, model: str = "iris") -> None:
    ports = _ports(argv)
    proc = host.dagserve(*_local(argv), env=env, log=tmp / f"{host.name}.log")
    base = f"{host.address}:{ports['http']}"
    host.wait_ready(proc, ports["http"], tmp / f"{host.name}.log", timeout=120)
    http = httpclient.InferenceServerClient(base)
    tensor = httpclient.InferInput("FEATURES", list(FLOWERS.shape), "FP32")
    tensor.set_data_from_numpy(FLOWERS)
    by_http = http.infer(model, [tensor]).as_numpy("LABEL")
    grpc = grpcclient.InferenceServerClient(f"{host.address}:{ports['grpc']}")
    tensor = grpcclient.InferInput("FEATURES", list(FLOWERS.shape), "FP32")
    tensor.set_data_from_numpy(FLOWERS)
    by_grpc = grpc.infer(model, [tensor]).as_numpy("LABEL")
    assert by_http.ravel().tolist() == by_grpc.ravel().tolist() == [b"setosa", b"virginica"]
    with urllib.request.urlopen(f"http://{host.address}:{ports['metrics']}/metrics", timeout=30) as reply:
        metrics = reply.read().decode()
    assert re.search(r'nv_inference_count\{model="iris",version="1"\} 4', metrics), metrics[:2000]


def test_image_command_line_and_healthcheck(tmp_path: Path) -> None:
    """The image's ENTRYPOINT + CMD serves infer (HTTP, gRPC) and metrics on 8000/8001/8002,
    and its HEALTHCHECK command passes against it."""
    image_argv, healthcheck = _containerfile()
    assert _ports(image_argv) == {"http": 8000, "grpc": 8001, "metrics": 8002}
    with network() as net:
        image = net.add("image")
        _serve_and_check(image, image_argv, {}, tmp_path)
        health = image.run([sys.executable if healthcheck[0] == "python3" else healthcheck[0], *healthcheck[1:]])
        assert health.returncode == 0, health.stderr


def test_chart_command_line(tmp_path: Path) -> None:
    """The chart's container command and args serve on the container ports it declares."""
    deployment = by_kind(render("default"))["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = container["command"] + container["args"]
    assert _ports(argv) == {p["name"]: p["containerPort"] for p in container["ports"]}
    with network() as net:
        _serve_and_check(net.add("chart"), argv, {}, tmp_path)


def test_kserve_runtime_command_line_answers_under_the_service_name(tmp_path: Path) -> None:
    """The KServe runtime's container, with the example InferenceService's environment, serves
    on its declared ports and answers under the service's name (DAGSERVE_MODEL_ALIAS)."""
    runtime = yaml.safe_load((KSERVE / "cluster-serving-runtime.yaml").read_text())
    (kserve,) = runtime["spec"]["containers"]
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    service_env = {e["name"]: e["value"] for e in service["spec"]["predictor"]["model"]["env"]}
    env = {e["name"]: e["value"] for e in kserve.get("env", ())} | service_env
    assert _ports(kserve["args"]) == {"http": 8080, "grpc": 9000, "metrics": 8002}
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8002"
    assert [p["containerPort"] for p in kserve["ports"]] == [8080]
    served = service["metadata"]["name"]
    assert service_env["DAGSERVE_MODEL_ALIAS"] == f"{served}=iris"
    with network() as net:
        _serve_and_check(net.add("kserve"), kserve["command"] + kserve["args"], env, tmp_path, model=served)


def _pod(container: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}}


def test_kserve_containers_are_valid_kubernetes_containers() -> None:
    """The runtime's container (most of the object) validated as a core Container, strictly, and
    the settings that matter checked by hand; without any fetched tool (the whole objects against
    KServe's schema: test_kserve_schema.py)."""
    import pytest

    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    runtime = yaml.safe_load((KSERVE / "cluster-serving-runtime.yaml").read_text())
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ClusterServingRuntime"
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "dagserve"
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert "--model-repository=/mnt/models" in container["args"]
    for version in ("1.28.0", "1.33.0"):
        kubernetes_validate.validate(_pod(container), version, strict=True)
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert (model["modelFormat"]["name"], model["runtime"], model["protocolVersion"]) == ("dagserve", "kserve-dagserve", "v2")
    for version in ("1.28.0", "1.33.0"):  # env and resources are core types
        kubernetes_validate.validate(_pod({"name": "c", "env": model["env"], "resources": model["resources"]}),
                                     version, strict=True)
