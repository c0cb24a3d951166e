"""A pipeline spanning hosts: network namespaces on a bridge stand in for a CPU pool (host a),
a GPU pool (host b) and a gateway, each running dagserve; the gateway's pipeline calls a node
on a (over gRPC) and a node on b (over HTTP). Checked with the real tritonclient: the same
outputs as the all-local pipeline; a link pulled mid-load fails only the requests that need
it, on time and naming the node, and service resumes when it is back; a frozen (SIGSTOPped)
remote gives DEADLINE_EXCEEDED on time.

The same pipeline with real Triton 2.51 (../shared/triton-reference) serving the second node
from its own host, reached over HTTP and over gRPC, when a Triton reference virtualenv exists
(``TRITON_VENV``, default /tmp/triton-venv, made by setup.sh); skipped with the reason otherwise.
The failure tests use a second dagserve on host b, whose process they can freeze."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.testing import wait_until

from .netns import Host, Network, network

REMOTE_REPO = Path(__file__).parents[1] / "repos" / "remote"
TIMEOUT_MS = 1500
ROOT = Path(__file__).parents[2]
TRITON_VENV = Path(os.environ.get("TRITON_VENV", "/tmp/triton-venv"))
# ../shared/triton-reference of the main checkout (a worktree sits one level deeper).
TRITON_REFERENCE = Path(os.environ.get("TRITON_REFERENCE") or next(
    (str(d / "shared" / "triton-reference") for d in (ROOT.parent, ROOT.parents[1])
     if (d / "shared" / "triton-reference" / "run_triton.sh").is_file()), str(ROOT.parent / "shared" / "triton-reference")))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _gateway_repo(root: Path, a: str, b: str, pipes: dict[str, tuple[str, str]] | None = None,
                  remotes: dict[str, str] | None = None) -> Path:
    """ra = scale on host a (gRPC), rb = scale on host b (HTTP); pipe = rb(ra(X)); local = the
    same pipeline over two local copies of scale. ``remotes`` (node -> url) and ``pipes`` (name ->
    (first node, second node)) replace the defaults."""
    tensors = """
        inputs: [{name: X, datatype: FP32, shape: [-1]}]
        outputs: [{name: Y, datatype: FP32, shape: [-1]}]
    """
    remotes = remotes if remotes is not None else {"ra": f"grpc://{a}:8001", "rb": f"http://{b}:8000"}
    pipes = pipes if pipes is not None else {"pipe": ("ra", "rb")}
    for name, url in remotes.items():
        head = textwrap.dedent(f"""
            backend: remote
            max_batch_size: 2
            remote: {{url: {url}, model_name: scale, timeout_ms: {TIMEOUT_MS}, health_interval_ms: 200,
                      connect_timeout_ms: 500}}
        """)
        _write(root / name / "config.yaml", head + textwrap.dedent(tensors))
    for name in ("scale1", "scale2"):
        shutil.copytree(REMOTE_REPO / "scale", root / name)
    for name, (first, second) in {**pipes, "local": ("scale1", "scale2")}.items():
        _write(root / name / "config.yaml", f"""
            backend: pipeline
            max_batch_size: 2
            inputs: [{{name: X, datatype: FP32, shape: [-1]}}]
            outputs: [{{name: Z, datatype: FP32, shape: [-1]}}]
            pipeline:
              steps:
                - {{model: {first}, inputs: {{X: X}}}}
                - {{model: {second}, inputs: {{X: {first}.Y}}}}
              outputs: {{Z: {second}.Y}}
        """)
    return root


def _ready(host: Host, log: Path) -> None:
    host.wait_ready(host.processes[-1], 8000, log)


@dataclass(frozen=True)
class Hosts:
    net: Network
    a: Host
    b: Host
    gateway: Host
    logs: Path


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    logs = tmp_path_factory.mktemp("netns")
    with network() as net:
        a, b, gw = net.add("a"), net.add("b"), net.add("gw")
        for host in (a, b):
            host.dagserve("--model-repository", str(REMOTE_REPO), "--host", host.address, log=logs / f"{host.name}.log")
        repo = _gateway_repo(logs / "gateway-repo", a.address, b.address)
        for host in (a, b):
            _ready(host, logs / f"{host.name}.log")
        gw.dagserve("--model-repository", str(repo), "--host", gw.address, log=logs / "gw.log")
        _ready(gw, logs / "gw.log")
        yield Hosts(net, a, b, gw, logs)


def _grpc_infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, out: str) -> np.ndarray:
    tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], client_timeout=30).as_numpy(out)


def _http_infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, out: str) -> np.ndarray:
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy(out)


def _gateway_traffic_stays_on_the_bridge(hosts: Hosts) -> None:
    """The gateway reaches the remotes at their own addresses: its connections say so."""
    sockets = hosts.gateway.run(["ss", "-tn"]).stdout if shutil.which("ss") else ""
    if sockets:
        for address, port in ((hosts.a.address, 8001), (hosts.b.address, 8000)):
            assert re.search(rf"{re.escape(address)}\]?:{port}\b", sockets), sockets


def test_remote_pipeline_matches_the_local_one_over_http_and_grpc(hosts: Hosts) -> None:
    """pipe (a node on host a, one on host b) answers exactly as local, over HTTP and gRPC."""
    rng = np.random.default_rng(7)
    http = httpclient.InferenceServerClient(f"{hosts.gateway.address}:8000")
    grpc = grpcclient.InferenceServerClient(f"{hosts.gateway.address}:8001")
    for rows in (1, 2):
        x = rng.standard_normal((rows, 5)).astype(np.float32)
        local = _http_infer(http, "local", x, "Z")
        np.testing.assert_array_equal(local, x * 4)
        np.testing.assert_array_equal(_http_infer(http, "pipe", x, "Z"), local)
        np.testing.assert_array_equal(_grpc_infer(grpc, "pipe", x, "Z"), local)
    _gateway_traffic_stays_on_the_bridge(hosts)


@dataclass(frozen=True)
class Outcome:
    model: str
    start: float
    seconds: float
    error: str  # "" = succeeded, else "STATUS: message"


def _load(address: str, model: str, stop: threading.Event, outcomes: list[Outcome]) -> None:
    client = grpcclient.InferenceServerClient(address)
    x = np.ones((1, 3), np.float32)
    out = "Z" if model == "pipe" else "Y"
    while not stop.is_set():
        start = time.monotonic()
        try:
            _grpc_infer(client, model, x, out)
            error = ""
        except InferenceServerException as exc:
            error = f"{exc.status()}: {exc.message()}"
        outcomes.append(Outcome(model, start, time.monotonic() - start, error))
    client.close()


def _live(hosts: Hosts) -> bool:
    with urllib.request.urlopen(f"http://{hosts.gateway.address}:8000/v2/health/live", timeout=10) as reply:
        return reply.status == 200


def test_link_down_mid_load_fails_only_its_requests_on_time_and_recovers(hosts: Hosts) -> None:
    """With host a's link down, pipe requests fail naming node ra within timeout + 1 s,
    requests for rb (host b) all succeed, the gateway stays live, and pipe answers again once
    the link is back, without a restart."""
    address = f"{hosts.gateway.address}:8001"
    outcomes: list[Outcome] = []
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(_load, address, model, stop, outcomes) for model in ("pipe", "pipe", "rb", "rb")]
        try:
            wait_until(lambda: sum(1 for o in outcomes if o.model == "pipe" and not o.error) >= 20, what="load runs")
            down_at = time.monotonic()
            hosts.a.link(up=False)
            try:
                wait_until(lambda: sum(1 for o in outcomes if o.start > down_at + TIMEOUT_MS / 1000 + 1 and o.model == "pipe") >= 5,
                           what="pipe requests answered while the link is down")
                assert _live(hosts)
            finally:
                hosts.a.link(up=True)
            up_at = time.monotonic()
            wait_until(lambda: any(o.start > up_at and o.model == "pipe" and not o.error for o in outcomes),
                       what="pipe answers again after the link is back")
        finally:
            stop.set()
            for worker in workers:
                worker.result(timeout=60)
    failed = [o for o in outcomes if o.error]
    assert failed, "pulling the link failed no request"
    assert all(o.model == "pipe" for o in failed), [o for o in failed if o.model != "pipe"][:3]
    assert all(o.seconds <= TIMEOUT_MS / 1000 + 1 for o in failed), max(o.seconds for o in failed)
    assert all("remote model 'ra'" in o.error for o in failed), failed[:3]
    codes = {o.error.split(":")[0] for o in failed}
    assert codes <= {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}, codes
    # Once the node is known unreachable, requests fail at once as UNAVAILABLE, not after the timeout.
    late = [o for o in failed if o.start > down_at + TIMEOUT_MS / 1000 + 1]
    assert late and all(o.error.startswith("StatusCode.UNAVAILABLE") for o in late), late[:3]
    print(f"\nlink down: {len(failed)} pipe requests failed ({sorted(codes)}); "
          f"{sum(1 for o in outcomes if o.model == 'rb')} rb requests all succeeded")


def test_a_frozen_remote_gives_deadline_exceeded_on_time(hosts: Hosts) -> None:
    """A SIGSTOPped remote: the call fails DEADLINE_EXCEEDED at timeout_ms (not before, at most
    1 s after), naming the node; after SIGCONT it answers again and nothing is left pending."""
    grpc = grpcclient.InferenceServerClient(f"{hosts.gateway.address}:8001")
    x = np.ones((1, 3), np.float32)
    _grpc_infer(grpc, "rb", x, "Y")
    remote = hosts.b.processes[-1]
    os.kill(remote.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(InferenceServerException) as caught:
            _grpc_infer(grpc, "rb", x, "Y")
        took = time.monotonic() - start
    finally:
        os.kill(remote.pid, signal.SIGCONT)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", caught.value
    assert "remote model 'rb'" in caught.value.message() and f"within {TIMEOUT_MS} ms" in caught.value.message()
    assert TIMEOUT_MS / 1000 - 0.05 <= took <= TIMEOUT_MS / 1000 + 1, took

    def answers() -> bool:
        try:
            _grpc_infer(grpc, "rb", x, "Y")
            return True
        except InferenceServerException:
            return False

    wait_until(answers, what="rb answers after SIGCONT")
    with urllib.request.urlopen(f"http://{hosts.gateway.address}:8002/metrics", timeout=30) as reply:
        metrics = reply.read().decode()
    pending = [line for line in metrics.splitlines() if line.startswith("nv_inference_pending_request_count")]
    assert pending and all(float(line.split()[-1]) == 0 for line in pending), pending


TRITON_SCALE_CONFIG = """
    backend: "python"
    max_batch_size: 2
    input [{ name: "X", data_type: TYPE_FP32, dims: [-1] }]
    output [{ name: "Y", data_type: TYPE_FP32, dims: [-1] }]
    instance_group [{ kind: KIND_CPU, count: 1 }]
"""
TRITON_SCALE_MODEL = """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        \"\"\"Y = X * 2, as tests/repos/remote/scale, in Triton's python backend form.\"\"\"

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
            return responses
"""


def _triton_skip_reason() -> str | None:
    run = TRITON_REFERENCE / "run_triton.sh"
    if not run.is_file():
        return f"no Triton reference launcher at {run} (set TRITON_REFERENCE to the triton-reference folder)"
    if not (TRITON_VENV / "bin" / "python").exists() or not list(TRITON_VENV.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver")):
        return (f"no Triton reference virtualenv at {TRITON_VENV} (TRITON_VENV): make one with "
                f"{TRITON_REFERENCE / 'setup.sh'} {TRITON_VENV}")
    return None


@pytest.fixture
def triton_hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Host a runs dagserve, host b the real tritonserver bound to b's address (run_triton.sh
    binds 127.0.0.1; Triton takes the last of a repeated flag, so ours override it), and the
    gateway's pipelines: pipe_http = th(ra(X)), pipe_grpc = tg(ra(X)), with th / tg Triton's
    scale over HTTP / gRPC."""
    reason = _triton_skip_reason()
    if reason:
        pytest.skip(reason)
    triton_repo = tmp_path / "triton-repo"
    _write(triton_repo / "scale" / "config.pbtxt", TRITON_SCALE_CONFIG)
    _write(triton_repo / "scale" / "1" / "model.py", TRITON_SCALE_MODEL)
    with network() as net:
        a, b, gw = net.add("a"), net.add("triton"), net.add("gw")
        a.dagserve("--model-repository", str(REMOTE_REPO), "--host", a.address, log=tmp_path / "a.log")
        b.popen(["bash", str(TRITON_REFERENCE / "run_triton.sh"), str(TRITON_VENV), str(triton_repo), "8000", "8001", "8002",
                 *(f"--{flag}-address={b.address}" for flag in ("http", "grpc", "metrics"))], log=tmp_path / "triton.log")
        repo = _gateway_repo(tmp_path / "gateway-repo", a.address, b.address,
                             remotes={"ra": f"grpc://{a.address}:8001", "th": f"http://{b.address}:8000",
                                      "tg": f"grpc://{b.address}:8001"},
                             pipes={"pipe_http": ("ra", "th"), "pipe_grpc": ("ra", "tg")})
        _ready(a, tmp_path / "a.log")
        _ready(b, tmp_path / "triton.log")
        gw.dagserve("--model-repository", str(repo), "--host", gw.address, log=tmp_path / "gw.log")
        _ready(gw, tmp_path / "gw.log")
        yield Hosts(net, a, b, gw, tmp_path)


def test_a_pipeline_over_dagserve_and_real_triton_matches_the_local_one(triton_hosts: Hosts) -> None:
    """A node on a dagserve host (gRPC) then a node on a real Triton host (over HTTP in one
    pipeline, gRPC in the other) answers exactly as the all-local pipeline, over HTTP and gRPC;
    the gateway's connections go to Triton's namespace address, which serves nothing on loopback."""
    hosts = triton_hosts
    with urllib.request.urlopen(f"http://{hosts.b.address}:8000/v2", timeout=10) as reply:
        assert json.load(reply)["name"] == "triton", "host b is not Triton"
    assert hosts.b.run(["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8000), 5)"]).returncode != 0, \
        "Triton still listens on 127.0.0.1 inside its host"
    rng = np.random.default_rng(11)
    http = httpclient.InferenceServerClient(f"{hosts.gateway.address}:8000")
    grpc = grpcclient.InferenceServerClient(f"{hosts.gateway.address}:8001")
    for rows in (1, 2):
        x = rng.standard_normal((rows, 7)).astype(np.float32)
        local = _http_infer(http, "local", x, "Z")
        np.testing.assert_array_equal(local, x * 4)
        for pipe in ("pipe_http", "pipe_grpc"):
            np.testing.assert_array_equal(_http_infer(http, pipe, x, "Z"), local)
            np.testing.assert_array_equal(_grpc_infer(grpc, pipe, x, "Z"), local)
    # Triton counted the requests the gateway's nodes sent it: 2 sizes x 2 protocols per node.
    # Its counter may trail the response it sent, so wait for it, then check it is exact.
    def served() -> float:
        with urllib.request.urlopen(f"http://{hosts.b.address}:8002/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        found = [line for line in lines if line.startswith("nv_inference_request_success{") and 'model="scale"' in line]
        return float(found[0].split()[-1]) if found else 0.0

    wait_until(lambda: served() >= 8, what="Triton to count 8 requests")
    assert served() == 8
    sockets = hosts.gateway.run(["ss", "-tn"]).stdout if shutil.which("ss") else ""
    if sockets:
        for address, port in ((hosts.a.address, 8001), (hosts.b.address, 8000), (hosts.b.address, 8001)):
            assert re.search(rf"{re.escape(address)}\]?:{port}\b", sockets), sockets
