"""`dagserve serve --workers N`: one server of several processes behind one set of ports.

Real processes, real sockets, the real tritonclient: connections spread over the workers (the
``whoami`` model answers with its process id), statistics and /metrics are single answers
summed over every worker, model control reaches every worker, a killed worker is started again
while the other answers, and a model placed in one worker (a sequence-batched one by default)
is reached from every worker."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REPOS = Path(__file__).parent / "repos"
DEADLINE = 90.0  # generous: the machine may be busy, and each worker loads the repository


class Served:
    """A `dagserve serve --workers` process and what it printed."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.addresses: dict[str, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)|metrics served at http://(\S+)/metrics",
                              line)
            if match:
                self.addresses[match.group(1) or "metrics"] = match.group(2) or match.group(3)
            if len(self.addresses) == 3:
                break
        else:
            raise AssertionError(f"server exited (code {proc.wait()}) before listening:\n{''.join(self.lines)}")
        self._drain = threading.Thread(target=lambda: self.lines.extend(proc.stdout or ()), daemon=True)
        self._drain.start()

    def output(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        """Stop the server if it still runs (gracefully, then for good) and close its pipe."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(DEADLINE)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(repository: str | Path, *args: str, env: dict[str, str] | None = None,
              cores: list[int] | None = None) -> Served:
        """``dagserve serve`` of ``repository`` on free ports; with ``cores``, allowed to run on
        those cores only (its CPU affinity, set before it starts, as ``taskset`` does)."""
        serve = ["-m", "dagserve.cli", "serve", "--model-repository", str(REPOS / repository),
                 "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args]
        if cores is not None:  # exec'd, so the server is this very process (no preexec_fn among threads)
            serve = ["-c", (f"import os, sys; os.sched_setaffinity(0, {cores!r}); "
                            f"os.execv(sys.executable, [sys.executable, *{serve!r}])")]
        proc = subprocess.Popen(
            [sys.executable, *serve],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
        )
        try:
            served = Served(proc)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def whoami_http(url: str, x: float = 1.0) -> int:
    """One request on a fresh connection; the pid of the worker that answered."""
    with httpclient.InferenceServerClient(url, network_timeout=DEADLINE) as client:
        inp = httpclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.array([x], dtype=np.float32))
        result = client.infer("whoami", [inp])
        np.testing.assert_array_equal(result.as_numpy("Y"), [x + 1])
        return int(result.as_numpy("PID")[0])


def whoami_grpc(url: str) -> int:
    with grpcclient.InferenceServerClient(url) as client:  # a channel of its own: a connection
        inp = grpcclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.array([2.0], dtype=np.float32))
        result = client.infer("whoami", [inp], client_timeout=DEADLINE)
        return int(result.as_numpy("PID")[0])


def until_every_worker(call: Callable[[], int], workers: int) -> tuple[set[int], int]:
    """Call on fresh connections until ``workers`` processes have answered: (pids, calls).
    Each connection lands on a worker at random; a restarted worker joins once it has loaded."""
    pids: set[int] = set()
    calls = 0
    end = time.monotonic() + DEADLINE
    while len(pids) < workers:
        assert time.monotonic() < end, f"{calls} connections reached only {len(pids)} of {workers} workers"
        pid = call()
        if pid:  # 0: that worker cannot answer yet
            pids.add(pid)
        calls += 1
    return pids, calls


def metric(url: str, name: str, model: str) -> float:
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=DEADLINE) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    found = re.findall(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert len(found) == 1, text
    return float(found[0])


def test_connections_spread_over_workers_and_statistics_are_summed(serve: Callable[..., Served]) -> None:
    served = serve("workers", "--workers", "2")
    assert "dagserve: 2 worker processes" in served.output()
    http_pids, http_calls = until_every_worker(lambda: whoami_http(served.addresses["HTTP"]), 2)
    grpc_pids, grpc_calls = until_every_worker(lambda: whoami_grpc(served.addresses["gRPC"]), 2)
    assert http_pids == grpc_pids, "one set of workers behind both protocols"
    total = http_calls + grpc_calls

    # Whichever worker answers (fresh connections again), the answer is the whole server's.
    for _ in range(6):
        with httpclient.InferenceServerClient(served.addresses["HTTP"]) as client:
            stats = client.get_inference_statistics("whoami")["model_stats"]
        assert [(s["name"], s["inference_count"], s["inference_stats"]["success"]["count"]) for s in stats] == [
            ("whoami", total, total)
        ]
        with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as gclient:
            gstats = gclient.get_inference_statistics("whoami", as_json=True)["model_stats"]
        assert [int(s["inference_count"]) for s in gstats] == [total]
        assert metric(served.addresses["metrics"], "nv_inference_request_success", "whoami") == total
        assert metric(served.addresses["metrics"], "nv_inference_count", "whoami") == total

    # An unknown model is the same clear error as with one process.
    with httpclient.InferenceServerClient(served.addresses["HTTP"]) as client, pytest.raises(
        InferenceServerException, match="unknown model 'nope'"
    ):
        client.get_inference_statistics("nope")


def _worker_pids(served: Served) -> list[int]:
    """The workers' pids in the order of their indexes, as the supervisor printed them."""
    match = re.search(r"worker processes \(pids ([\d, ]+)\)", served.output())
    assert match, served.output()
    return [int(p) for p in match.group(1).split(", ")]


def _held_connections(directory: Path, port: str, workers: int) -> list[int]:
    """Each worker's connections of ``port`` (http, grpc) as its slot in the shared
    ``connections`` file says (dagserve/balance.py: connections + 1; 0 while taking none)."""
    (folder,) = directory.glob("dagserve-workers-*")
    words = struct.unpack(f"{2 * workers}q", (folder / "connections").read_bytes()[:16 * workers])
    return [words[2 * w + ("http", "grpc").index(port)] - 1 for w in range(workers)]


class _Kept:
    """Keep-alive connections to the server, each with the pid of the worker that serves it."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.http: list[tuple[httpclient.InferenceServerClient, int]] = []
        self.grpc: list[tuple[grpcclient.InferenceServerClient, int]] = []

    def open_http(self) -> int:
        client = httpclient.InferenceServerClient(self.served.addresses["HTTP"], network_timeout=DEADLINE)
        inp = httpclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        pid = int(client.infer("whoami", [inp]).as_numpy("PID")[0])
        self.http.append((client, pid))
        return pid

    def open_grpc(self) -> int:
        # A subchannel pool of its own: grpcio shares one TCP connection among channels to the
        # same target otherwise.
        client = grpcclient.InferenceServerClient(self.served.addresses["gRPC"],
                                                  channel_args=[("grpc.use_local_subchannel_pool", 1)])
        inp = grpcclient.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.array([2.0], dtype=np.float32))
        pid = int(client.infer("whoami", [inp], client_timeout=DEADLINE).as_numpy("PID")[0])
        self.grpc.append((client, pid))
        return pid

    def close_served_by(self, pid: int) -> None:
        for kept in (self.http, self.grpc):
            for client, served_by in [k for k in kept if k[1] == pid]:
                client.close()
                kept.remove((client, served_by))  # type: ignore[arg-type]

    def close(self) -> None:
        for client, _ in [*self.http, *self.grpc]:
            client.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: the workers' Unix sockets live under it
    (TMPDIR), and pytest's tmp_path can be longer than a socket path may be."""
    path = Path(tempfile.mkdtemp(prefix="dgs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_connections_are_placed_evenly_whatever_the_kernel_hash(
    serve: Callable[..., Served], short_tmp: Path
) -> None:
    """With two workers, four HTTP keep-alive connections and four gRPC channels opened one
    after another are served two by each worker (a worker that holds more than the other
    hands the new connection over); once one worker's connections close, the next ones go to
    it."""
    served = serve("workers", "--workers", "2", env={"TMPDIR": str(short_tmp)})
    first, second = _worker_pids(served)
    kept = _Kept(served)
    try:
        http = [kept.open_http() for _ in range(4)]
        grpc = [kept.open_grpc() for _ in range(4)]
        assert collections.Counter(http) == {first: 2, second: 2}, http
        assert collections.Counter(grpc) == {first: 2, second: 2}, grpc
        assert _held_connections(short_tmp, "http", 2) == [2, 2]
        assert _held_connections(short_tmp, "grpc", 2) == [2, 2]

        # Worker `first` loses its connections: the next two of each port go to it, whichever
        # worker the kernel gives them to.
        kept.close_served_by(first)
        wait_for(lambda: _held_connections(short_tmp, "http", 2) == [0, 2]
                 and _held_connections(short_tmp, "grpc", 2) == [0, 2], "the closed connections to be counted")
        again = [kept.open_http() for _ in range(2)]
        assert again == [first, first], (again, _held_connections(short_tmp, "http", 2), served.output())
        again = [kept.open_grpc() for _ in range(2)]
        assert again == [first, first], (again, _held_connections(short_tmp, "grpc", 2), served.output())
        assert kept.open_http() in (first, second)  # 3:2 either way
    finally:
        kept.close()
    assert "Traceback" not in served.output()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_tls_connection_handed_to_another_worker_completes_its_handshake_there(
    serve: Callable[..., Served], short_tmp: Path
) -> None:
    """Over HTTPS and gRPC with TLS, a connection is handed over before its handshake: four of
    each, opened one after another, are served two by each worker and answer."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        cwd=short_tmp, check=True, capture_output=True, timeout=DEADLINE,
    )
    cert, key = str(short_tmp / "cert.pem"), str(short_tmp / "key.pem")
    served = serve("workers", "--workers", "2", "--http-use-ssl", "--http-server-cert", cert, "--http-server-key", key,
                   "--grpc-use-ssl", "--grpc-server-cert", cert, "--grpc-server-key", key,
                   env={"TMPDIR": str(short_tmp)})
    http_url = served.addresses["HTTP"].removeprefix("https://")
    clients: list[Any] = []
    try:
        http, grpc = [], []
        for _ in range(4):
            client = httpclient.InferenceServerClient(
                http_url, ssl=True, ssl_context_factory=lambda: ssl.create_default_context(cafile=cert),
                network_timeout=DEADLINE)
            clients.append(client)
            inp = httpclient.InferInput("X", [1], "FP32")
            inp.set_data_from_numpy(np.array([1.0], dtype=np.float32))
            http.append(int(client.infer("whoami", [inp]).as_numpy("PID")[0]))
        for _ in range(4):
            gclient = grpcclient.InferenceServerClient(
                served.addresses["gRPC"], ssl=True, root_certificates=cert,
                channel_args=[("grpc.use_local_subchannel_pool", 1)])
            clients.append(gclient)
            ginp = grpcclient.InferInput("X", [1], "FP32")
            ginp.set_data_from_numpy(np.array([2.0], dtype=np.float32))
            grpc.append(int(gclient.infer("whoami", [ginp], client_timeout=DEADLINE).as_numpy("PID")[0]))
    finally:
        for each in clients:
            each.close()
    workers = set(_worker_pids(served))
    assert sorted(collections.Counter(http).values()) == [2, 2] and set(http) == workers, http
    assert sorted(collections.Counter(grpc).values()) == [2, 2] and set(grpc) == workers, grpc


def test_workers_start_when_tmpdir_is_too_long_a_path_for_unix_sockets(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """A Unix socket's path holds at most 107 bytes; with a ``$TMPDIR`` longer than that
    leaves room for, the workers' private directory goes to /tmp instead of the start failing
    (it used to fail, blaming the ports)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    served = serve("workers", "--workers", "2", env={"TMPDIR": str(deep)})
    pids = _worker_pids(served)
    assert len(set(pids)) == 2
    assert whoami_http(served.addresses["HTTP"]) in pids
    assert "too long a path for Unix sockets" in served.output()


@pytest.mark.parametrize(("args", "env", "listening"), [
    (("--grpc-server", "native"), {}, "gRPC (native) listening"),
    (("--grpc-server", "grpcio"), {}, "grpc.py:"),
    ((), {"DAGSERVE_GRPC_SERVER": "grpcio"}, "grpc.py:"),
])
def test_every_worker_runs_the_chosen_grpc_server(
    serve: Callable[..., Served], args: tuple[str, ...], env: dict[str, str], listening: str
) -> None:
    """--grpc-server (or DAGSERVE_GRPC_SERVER) reaches every worker: each one logs that it
    listens with that server, and gRPC answers through every worker."""
    served = serve("workers", "--workers", "2", *args, env={"DAGSERVE_GRPC_SERVER": "native", **env})
    until_every_worker(lambda: whoami_grpc(served.addresses["gRPC"]), 2)
    lines = [line for line in served.output().splitlines() if "listening on" in line and listening in line]
    assert len(lines) == 2, served.output()


def test_log_and_trace_settings_change_in_every_worker(serve: Callable[..., Served]) -> None:
    served = serve("workers", "--workers", "2")
    url = served.addresses["HTTP"]
    until_every_worker(lambda: whoami_http(url), 2)
    with httpclient.InferenceServerClient(url) as client:
        assert client.update_log_settings({"log_verbose_level": 2})["log_verbose_level"] == 2
        client.update_trace_settings(settings={"trace_rate": "7"})
    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as gclient:
        gclient.update_log_settings({"log_warning": False})
    for _ in range(20):  # fresh connections: whichever worker answers has the new settings
        with httpclient.InferenceServerClient(url) as client:
            logs = client.get_log_settings()
            assert (logs["log_verbose_level"], logs["log_warning"]) == (2, False)
            assert client.get_trace_settings()["trace_rate"] == "7"


def test_load_and_unload_reach_every_worker(serve: Callable[..., Served]) -> None:
    served = serve("workers", "--workers", "2", "--model-control-mode", "explicit")
    url = served.addresses["HTTP"]
    with httpclient.InferenceServerClient(url) as client:
        assert not client.is_model_ready("whoami")
        client.load_model("whoami")
    until_every_worker(lambda: whoami_http(url), 2)  # every worker serves it at once

    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as gclient:
        gclient.unload_model("whoami")
    for _ in range(20):  # fresh connections: no worker serves it any more
        with httpclient.InferenceServerClient(url) as client:
            assert not client.is_model_ready("whoami")
            with pytest.raises(InferenceServerException):
                whoami_http(url)

    with httpclient.InferenceServerClient(url) as client, pytest.raises(
        InferenceServerException, match="whoami"
    ):
        client.unload_model("whoami")  # not loaded anywhere: the error of one process


def test_a_worker_that_dies_is_started_again_while_the_others_answer(serve: Callable[..., Served]) -> None:
    served = serve("workers", "--workers", "2", "--model-control-mode", "explicit", "--load-model", "whoami")
    url = served.addresses["HTTP"]
    before, _ = until_every_worker(lambda: whoami_http(url), 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"(pid {victim}) was killed by SIGKILL; starting it again" in served.output(),
             "the supervisor to start the worker again")
    # Every request meanwhile is answered (by the live worker) until the new one serves too;
    # it loaded what the others had loaded.
    after, _ = until_every_worker(lambda: whoami_http(url), 2)
    assert victim not in after and len(after & before) == 1


def test_a_sequence_reaches_its_state_whichever_worker_each_request_reaches(serve: Callable[..., Served]) -> None:
    """A sequence-batched model is served by one worker (placement ``one``, its default); the
    others forward to it. Each request of a sequence here goes on a fresh connection, over
    HTTP and gRPC in turn, so they reach both workers: the running sums are exact, and the
    statistics count every request once."""
    served = serve("sequence", "--workers", "2")
    totals: dict[int, list[int]] = {7: [], 8: []}
    for i, x in enumerate([3, 4, 5, 6, 7, 8]):
        for seq, module, url in ((7, httpclient, served.addresses["HTTP"]), (8, grpcclient, served.addresses["gRPC"])):
            with module.InferenceServerClient(url) as client:
                inp = module.InferInput("X", [1, 1], "INT32")
                inp.set_data_from_numpy(np.array([[x * (seq - 6)]], np.int32))
                result = client.infer("accumulate", [inp], outputs=[module.InferRequestedOutput("TOTAL")],
                                      sequence_id=seq, sequence_start=i == 0, sequence_end=i == 5)
                totals[seq].append(int(result.as_numpy("TOTAL")[0, 0]))
    assert totals == {7: [3, 7, 12, 18, 25, 33], 8: [6, 14, 24, 36, 50, 66]}
    with httpclient.InferenceServerClient(served.addresses["HTTP"]) as hclient:
        stats = hclient.get_inference_statistics("accumulate")["model_stats"]
    assert [s["inference_stats"]["success"]["count"] for s in stats] == [12]


def test_placement_one_serves_a_model_from_one_worker(serve: Callable[..., Served]) -> None:
    """``parameters: {placement: one}``: however many workers the connections reach, one
    process answers, with the outputs and errors it would give itself."""
    served = serve("workers", "--workers", "2")
    url = served.addresses["HTTP"]
    until_every_worker(lambda: whoami_http(url), 2)  # both workers serve connections
    owners = set()
    for _ in range(16):
        with httpclient.InferenceServerClient(url) as client:
            inp = httpclient.InferInput("X", [2], "FP32")
            inp.set_data_from_numpy(np.array([1.5, 2.5], dtype=np.float32))
            result = client.infer("whoami_one", [inp], outputs=[httpclient.InferRequestedOutput("PID")])
            assert result.as_numpy("Y") is None, "only the output asked for"
            owners.add(int(result.as_numpy("PID")[0]))
            bad = httpclient.InferInput("X", [2], "INT32")
            bad.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
            with pytest.raises(InferenceServerException, match="X"):
                client.infer("whoami_one", [bad])
    assert len(owners) == 1
    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as gclient:
        stats = gclient.get_inference_statistics("whoami_one", as_json=True)["model_stats"]
    assert [int(s["inference_stats"]["success"]["count"]) for s in stats] == [16]


def _onnx_scale_repository(root: Path) -> Path:
    """A repository of ``scale`` (ONNX Runtime: y = 2x + 1, FP32 [4] rows, batching) with a
    full config (nothing to auto-complete, so only a worker that loads it opens the graph),
    and ``whoami``."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("Add", ["doubled", "one"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                     helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    (root / "scale" / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(root / "scale" / "1" / "model.onnx"))
    (root / "scale" / "config.yaml").write_text(
        "backend: onnxruntime\nmax_batch_size: 8\n"
        "inputs: [{name: x, datatype: FP32, shape: [4]}]\noutputs: [{name: y, datatype: FP32, shape: [4]}]\n"
    )
    shutil.copytree(REPOS / "workers" / "whoami", root / "whoami")
    return root


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as maps:
        return maps.read()


def test_a_framework_model_is_loaded_by_one_worker_and_answers_through_every_worker(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """An ONNX Runtime model is placed ``one`` by default: worker 0 alone has the runtime in
    memory, and a connection to either worker gets its answer, counted once."""
    served = serve(_onnx_scale_repository(tmp_path), "--workers", "2")
    match = re.search(r"dagserve: 2 worker processes \(pids (\d+), (\d+)\)", served.output())
    assert match, served.output()
    owner, other = int(match.group(1)), int(match.group(2))  # in worker order
    assert "onnxruntime" in _maps(owner)
    assert "onnxruntime" not in _maps(other), "worker 1 forwards: it never loads the runtime"

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    pids: set[int] = set()
    calls = 0
    end = time.monotonic() + DEADLINE
    while pids != {owner, other}:
        assert time.monotonic() < end, f"{calls} connections reached only workers {pids}"
        # One client, one connection: whoami says which worker holds it, scale is asked there.
        with httpclient.InferenceServerClient(served.addresses["HTTP"], network_timeout=DEADLINE) as client:
            who = httpclient.InferInput("X", [1], "FP32")
            who.set_data_from_numpy(np.array([0.0], dtype=np.float32))
            pids.add(int(client.infer("whoami", [who]).as_numpy("PID")[0]))
            inp = httpclient.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("scale", [inp]).as_numpy("y"), 2 * x + 1)
        calls += 1
    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as gclient:
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x[:1])
        np.testing.assert_array_equal(gclient.infer("scale", [inp]).as_numpy("y"), 2 * x[:1] + 1)
        stats = gclient.get_inference_statistics("scale", as_json=True)["model_stats"]
    assert [int(s["inference_stats"]["success"]["count"]) for s in stats] == [calls + 1]
    assert "onnxruntime" not in _maps(other)


@pytest.mark.parametrize("spread", [True, False])
def test_a_busy_worker_hands_requests_of_one_connection_to_an_idle_one(
    serve: Callable[..., Served], tmp_path: Path, spread: bool
) -> None:
    """Eight calls at once on one gRPC channel (one connection, so one worker) to a replicated
    model that holds each call at a gate: with ``--worker-spread true`` the busy worker hands
    some to the idle one, so calls wait in both processes; without it (the default) all wait in
    one (with ``--worker-relay false``: the relay would hand calls on too). Once the gate opens every call is answered with its own result, and the statistics
    count each once."""
    gate = tmp_path / "gate"
    served = serve("shutdown", "--workers", "2", "--worker-relay", "false",  # (the relay spreads calls too)
                   *(["--worker-spread", "true"] if spread else []), env={"DAGSERVE_TEST_GATE": str(gate)})
    pids = {int(p) for p in re.search(r"worker processes \(pids ([\d, ]+)\)", served.output()).group(1).split(", ")}  # type: ignore[union-attr]
    results: dict[int, object] = {}
    done = threading.Event()

    def arrivals() -> list[int]:
        return [int(f.name.split("-")[0]) for f in (gate / "arrived").iterdir()] if (gate / "arrived").exists() else []

    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as client:
        def answered(i: int, result: Any, error: Any) -> None:
            results[i] = error if error is not None else float(result.as_numpy("Y")[0])
            if len(results) == 8:
                done.set()

        for i in range(8):
            x = grpcclient.InferInput("X", [1], "FP32")
            x.set_data_from_numpy(np.array([i], dtype=np.float32))
            client.async_infer("gate", [x], functools.partial(answered, i), client_timeout=DEADLINE)
        wait_for(lambda: len(arrivals()) == 8, "the eight calls to reach the gate")
        waiting = collections.Counter(arrivals())
        assert len(waiting) == (2 if spread else 1) and set(waiting) <= pids, f"calls waiting per worker: {waiting}"
        (gate / "open").touch()
        assert done.wait(DEADLINE)
        stats = client.get_inference_statistics("gate", as_json=True)["model_stats"]
    assert results == {i: i + 1.0 for i in range(8)}
    assert [int(s["inference_stats"]["success"]["count"]) for s in stats] == [8]


def test_sigterm_stops_every_worker_and_exits_0(serve: Callable[..., Served]) -> None:
    served = serve("workers", "--workers", "2")
    pids, _ = until_every_worker(lambda: whoami_http(served.addresses["HTTP"]), 2)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(DEADLINE) == 0, served.output()
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid), f"worker {pid} to end")
    assert "dagserve: stopped" in served.output()


def test_sigterm_to_every_process_at_once_still_drains(serve: Callable[..., Served], tmp_path: Path) -> None:
    """systemd stops a service by sending SIGTERM to every process of its cgroup: each worker
    then gets one signal from systemd and one from the supervisor, which must not count as an
    operator's second signal (exit at once). Requests held in both workers when the signals
    come are all answered once the gate opens, and the server exits 0."""
    gate = tmp_path / "gate"
    served = serve("shutdown", "--workers", "2", env={"DAGSERVE_TEST_GATE": str(gate)})
    workers = [int(p) for p in re.search(r"worker processes \(pids (\d+), (\d+)\)", served.output()).groups()]  # type: ignore[union-attr]
    url = served.addresses["HTTP"]
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            with httpclient.InferenceServerClient(url, network_timeout=DEADLINE) as client:
                x = httpclient.InferInput("X", [1], "FP32")
                x.set_data_from_numpy(np.array([i], dtype=np.float32))
                results[i] = float(client.infer("gate", [x]).as_numpy("Y")[0])
        except Exception as exc:  # noqa: BLE001 - asserted on below
            results[i] = exc

    def held_in() -> set[int]:
        return {int(f.name.split("-")[0]) for f in (gate / "arrived").iterdir()} if (gate / "arrived").exists() else set()

    threads: list[threading.Thread] = []
    end = time.monotonic() + DEADLINE
    while held_in() != set(workers):  # fresh connections until both workers hold some
        assert time.monotonic() < end, f"requests reached only {held_in()} of {workers}"
        thread = threading.Thread(target=call, args=(len(threads),))
        threads.append(thread)
        thread.start()
        wait_for(lambda: sum(1 for _ in (gate / "arrived").iterdir()) >= len(threads), "the request to arrive")
    for pid in workers:  # systemd's signal to every process; the supervisor's comes after
        os.kill(pid, signal.SIGTERM)

    def refused() -> bool:  # both workers draining: neither listens any more
        try:
            socket.create_connection(tuple(url.rsplit(":", 1)), timeout=DEADLINE).close()  # type: ignore[arg-type]
        except ConnectionError:
            return True
        return False

    wait_for(refused, "both workers to stop listening")
    served.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping 2 workers" in served.output(), "the supervisor's stop to begin")
    (gate / "open").touch()
    for thread in threads:
        thread.join(DEADLINE)
    assert served.proc.wait(DEADLINE) == 0, served.output()
    assert "exiting now" not in served.output()
    assert results == {i: i + 1.0 for i in range(len(threads))}, results


def test_worker_0_serves_forwarded_models_until_the_other_workers_have_drained(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """``gated`` = gate -> double, and ``double`` is placed in worker 0. Worker 0's own requests
    pass its gate at once, so on SIGTERM it has nothing left to drain, while worker 1's wait at
    the gate; once that opens, their ``double`` steps are forwarded to worker 0, which must still
    serve it: every request is answered and the server exits 0."""
    gate = tmp_path / "gate"
    served = serve("shutdown", "--workers", "2", env={"DAGSERVE_TEST_GATE": str(gate)})
    owner = int(re.search(r"worker processes \(pids (\d+),", served.output()).group(1))  # type: ignore[union-attr]
    (gate / f"open-{owner}").touch()
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            with httpclient.InferenceServerClient(served.addresses["HTTP"], network_timeout=DEADLINE) as client:
                x = httpclient.InferInput("X", [1], "FP32")
                x.set_data_from_numpy(np.array([i], dtype=np.float32))
                results[i] = float(client.infer("gated", [x]).as_numpy("Y")[0])
        except Exception as exc:  # noqa: BLE001 - asserted on below
            results[i] = exc

    def waiting_elsewhere() -> int:
        return sum(1 for f in (gate / "arrived").iterdir() if not f.name.startswith(f"{owner}-"))

    threads: list[threading.Thread] = []
    while not waiting_elsewhere():  # fresh connections until some reach the other worker
        batch = [threading.Thread(target=call, args=(len(threads) + k,)) for k in range(4)]
        threads += batch
        for thread in batch:
            thread.start()
        wait_for(lambda: sum(1 for _ in (gate / "arrived").iterdir()) >= len(threads), "the requests to arrive")
    wait_for(lambda: len(results) == len(threads) - waiting_elsewhere(), "worker 0's requests to be answered")
    served.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping 2 workers" in served.output(), "the stop to begin")
    (gate / "open").touch()
    for thread in threads:
        thread.join(DEADLINE)
    assert served.proc.wait(DEADLINE) == 0, served.output()
    assert results == {i: (i + 1) * 2 for i in range(len(threads))}, results


def test_poll_mode_picks_up_a_new_model_in_every_worker(serve: Callable[..., Served], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    served = serve(repo, "--workers", "2", "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    shutil.copytree(REPOS / "workers" / "whoami", repo / "whoami")
    until_every_worker(lambda: _whoami_once_ready(served.addresses["HTTP"]), 2)


def _whoami_once_ready(url: str) -> int:
    """whoami's answer on a fresh connection, once that worker has loaded it (0 before)."""
    try:
        return whoami_http(url)
    except InferenceServerException:
        return 0


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc: no psutil)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state
                children.add(int(entry.name))
    return children


def test_workers_default_to_one_per_core_of_the_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --workers or DAGSERVE_WORKERS, ``serve`` runs one worker per core it may use."""
    from dagserve.cli import build_parser

    monkeypatch.delenv("DAGSERVE_WORKERS", raising=False)
    args = build_parser().parse_args(["serve", "--model-repository", "."])
    assert args.workers == len(os.sched_getaffinity(0))
    monkeypatch.setenv("DAGSERVE_WORKERS", "3")
    assert build_parser().parse_args(["serve", "--model-repository", "."]).workers == 3
    assert build_parser().parse_args(["serve", "--model-repository", ".", "--workers", "1"]).workers == 1


@pytest.mark.parametrize(("loads", "chosen"), [
    ([1, 0], 1),              # two workers: a call runs here, none there
    ([0, 0], None),           # nothing runs here: the call stays
    ([3, 1, 1, 1], None),     # busier, but no worker is idle
    ([1, 1, 0, 1], 2),        # the idle one
    ([4] * 15 + [0], 15),     # c64 on 16: an idle worker takes it even when all others are busy
    ([2, 0, 0, 0], 1),        # the first idle one from the next worker on, so that calls spread
])
def test_the_relay_hands_a_call_on_only_from_a_busy_worker_to_an_idle_one(
    tmp_path: Path, loads: list[int], chosen: int | None
) -> None:
    """:meth:`Relay.peer`: worker 0's choice, given the calls each worker runs (a call it has
    handed to a worker and not seen answered counts there too)."""
    from dagserve.frontends.grpc_native.relay import Relay

    relay = Relay(tmp_path, 0, len(loads), loads.copy())
    relay._loads[0] = loads[0]  # the constructor zeroes its own slot (a restarted worker's)
    assert relay.peer(b"request") == chosen
    assert relay.peer(b"... shared_memory_region ...") is None, "a shared-memory call stays"
    if chosen is not None:
        relay._sent[chosen] += 1
        assert relay.peer(b"request") != chosen, "a worker sent a call is no longer idle"


def test_the_relay_is_on_by_default_unless_the_workers_outnumber_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--worker-relay auto`` (the default): on for as many workers as usable cores or fewer,
    off for more; ``true`` / ``false`` (flag or DAGSERVE_WORKER_RELAY) decide alone."""
    from dagserve.cli import build_parser
    from dagserve.workers import relay_by_default

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("dagserve.workers.cpu_quota", lambda: None)
    assert [relay_by_default(n) for n in (2, 4, 5, 16)] == [True, True, False, False]
    monkeypatch.delenv("DAGSERVE_WORKER_RELAY", raising=False)
    parse = build_parser().parse_args
    assert parse(["serve", "--model-repository", "."]).worker_relay is None
    assert parse(["serve", "--model-repository", ".", "--worker-relay", "false"]).worker_relay is False
    assert parse(["serve", "--model-repository", ".", "--worker-relay", "AUTO"]).worker_relay is None
    monkeypatch.setenv("DAGSERVE_WORKER_RELAY", "true")
    assert build_parser().parse_args(["serve", "--model-repository", "."]).worker_relay is True


def test_by_default_a_one_core_server_is_one_process(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dagserve serve`` with no --workers, allowed one core: no supervisor, no worker
    processes; the process started answers requests itself."""
    monkeypatch.delenv("DAGSERVE_WORKERS", raising=False)
    served = serve("workers", cores=sorted(os.sched_getaffinity(0))[:1])
    assert "worker processes" not in served.output()
    assert whoami_http(served.addresses["HTTP"]) == served.proc.pid
    assert whoami_grpc(served.addresses["gRPC"]) == served.proc.pid
    assert _children(served.proc.pid) == set()


def test_by_default_a_two_core_server_runs_two_workers(
    serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dagserve serve`` with no --workers, allowed two cores: a supervisor of two worker
    processes, both of which answer over HTTP."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        pytest.skip("this process may use one core only")
    monkeypatch.delenv("DAGSERVE_WORKERS", raising=False)
    served = serve("workers", cores=cores)
    match = re.search(r"dagserve: 2 worker processes \(pids (\d+), (\d+)\)", served.output())
    assert match, served.output()
    workers = {int(match.group(1)), int(match.group(2))}
    assert _children(served.proc.pid) == workers
    pids, _ = until_every_worker(lambda: whoami_http(served.addresses["HTTP"]), 2)
    assert pids == workers


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_worker_counts_are_refused(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPOS / "workers"),
         "--workers", value], capture_output=True, text=True, timeout=DEADLINE,
    )
    assert done.returncode == 2
    assert f"--workers must be a whole number of processes (1 or more) or 'auto', not '{value}'" in done.stderr


def test_decoupled_streams_are_answered_by_their_worker(serve: Callable[..., Served]) -> None:
    """A gRPC stream stays on the worker its connection reached: every stream gets all of its
    responses in order, and the statistics count every request once."""
    served = serve("decoupled", "--workers", "2")
    streams = 12
    for s in range(streams):
        received: list[object] = []
        done = threading.Event()

        def collect(result: object, error: object, received: list[object] = received, done: threading.Event = done) -> None:
            received.append(error if error is not None else result)
            if error is not None or len(received) == 5:
                done.set()

        with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as client:  # a connection each
            client.start_stream(callback=collect)
            n = grpcclient.InferInput("N", [1], "INT32")
            n.set_data_from_numpy(np.array([5], dtype=np.int32))
            client.async_stream_infer("repeat", [n], request_id=f"s{s}")
            assert done.wait(DEADLINE), f"stream {s}: {received}"
            client.stop_stream()
        assert [r.as_numpy("OUT")[0] for r in received] == list(range(5)), received  # type: ignore[attr-defined]
    # A stream's success is counted once its model returns, which may be just after the client
    # has its last response: poll for the count.
    with httpclient.InferenceServerClient(served.addresses["HTTP"]) as hclient:
        def successes() -> list[int]:
            stats = hclient.get_inference_statistics("repeat")["model_stats"]
            return [s["inference_stats"]["success"]["count"] for s in stats]

        seen: list[list[int]] = []

        def all_counted() -> bool:
            seen.append(successes())
            return seen[-1] == [streams]

        try:
            wait_for(all_counted, f"{streams} successes in the statistics")
        except AssertionError as exc:  # say what was counted, and what the server said
            stats = hclient.get_inference_statistics("repeat")["model_stats"]
            raise AssertionError(f"{exc}; counted {seen[-1]} last (first {seen[0]}), statistics {stats}; "
                                 f"server output:\n{served.output()[-4000:]}") from None


def test_a_decoupled_model_placed_one_streams_through_the_worker_that_forwards(serve: Callable[..., Served]) -> None:
    """Streams of a decoupled model served by one worker: every stream, whichever worker its
    connection reached, gets its responses in order from that one process, and an error
    after some responses arrives after them."""
    served = serve("workers", "--workers", "2")
    until_every_worker(lambda: whoami_http(served.addresses["HTTP"]), 2)
    pids = set()
    for s in range(10):
        n_value = 4 if s % 2 == 0 else -3
        received: list[object] = []
        done = threading.Event()

        def collect(result: object, error: object, received: list[object] = received, done: threading.Event = done) -> None:
            received.append(error if error is not None else result)
            if error is not None:
                done.set()

        with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as client:
            client.start_stream(callback=collect)
            n = grpcclient.InferInput("N", [1], "INT32")
            n.set_data_from_numpy(np.array([n_value], dtype=np.int32))
            client.async_stream_infer("stream_one", [n], enable_empty_final_response=True)
            wait_for(lambda received=received: done.is_set() or any(
                getattr(r, "get_response", None) and r.get_response().parameters.get("triton_final_response", None)
                and r.get_response().parameters["triton_final_response"].bool_param for r in received
            ), f"stream {s} to end")
            client.stop_stream()
        answers = [r for r in received if getattr(r, "as_numpy", None) is not None and r.as_numpy("OUT") is not None]
        assert [int(r.as_numpy("OUT")[0]) for r in answers] == list(range(abs(n_value))), received
        pids |= {int(r.as_numpy("PID")[0]) for r in answers}
        if n_value < 0:
            assert isinstance(received[-1], InferenceServerException), received
            assert f"failed after {-n_value} responses" in str(received[-1])
    assert len(pids) == 1


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, "replicate"),
        ({"parameters": {"placement": "one"}}, "one"),
        ({"instance_group": [{"kind": "KIND_GPU"}]}, "one"),  # loaded on the GPU once
        ({"instance_group": [{"kind": "KIND_GPU"}], "parameters": {"placement": "replicate"}}, "replicate"),
        ({"sequence_batching": {}}, "one"),
        ({"sequence_batching": {}, "parameters": {"placement": "replicate"}}, "whose state must be in one process"),
        ({"parameters": {"placement": "everywhere"}}, "must be 'replicate' or 'one', not 'everywhere'"),
        # Framework runtimes: one copy of the weights, one intra-op thread pool over the cores.
        ({"backend": "pytorch"}, "one"),
        ({"backend": "", "platform": "pytorch_libtorch"}, "one"),
        ({"backend": "onnxruntime"}, "one"),
        ({"backend": "", "platform": "onnxruntime_onnx"}, "one"),
        ({"backend": "tensorrt"}, "one"),
        ({"backend": "", "platform": "tensorrt_plan"}, "one"),
        ({"backend": "fil"}, "one"),
        ({"backend": "onnxruntime", "parameters": {"placement": "replicate"}}, "replicate"),  # said explicitly
        ({"backend": "fil", "parameters": {"placement": "replicate"}}, "replicate"),
        ({"backend": "pytorch", "sequence_batching": {}, "parameters": {"placement": "replicate"}},
         "whose state must be in one process"),
        # Python code holds the GIL: processes are what spread it over the cores.
        ({"backend": "sklearn"}, "replicate"),
        ({"backend": "remote", "remote": {"url": "http://127.0.0.1:1"}}, "replicate"),  # a client
    ],
)
def test_placement_defaults_and_refusals(config: dict[str, object], expected: str) -> None:
    """A config's ``placement`` wins (but for a sequence batcher); without it, sequence-batched,
    KIND_GPU and framework-backend models are placed in one worker, the rest replicated."""
    from dagserve.engine.peers import placement
    from dagserve.errors import ConfigError
    from dagserve.repository.config import ModelConfig

    model = ModelConfig.model_validate({"name": "m", "backend": "python", **config})
    if expected in ("one", "replicate"):
        assert placement(model, "m") == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            placement(model, "m")


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cpu_quota_is_the_least_of_the_cgroup_and_its_parents_v2(tmp_path: Path) -> None:
    """cgroup v2: a pod's limit above the container's own cgroup counts; ``max`` is no limit."""
    from dagserve.workers import cpu_quota

    root = _write(tmp_path, {"kubepods/pod1/cpu.max": "150000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n",
                             "kubepods/cpu.max": "max 100000\n", "other/cpu.max": "50000 100000\n"})
    assert cpu_quota(root, "0::/kubepods/pod1/c1\n") == 1.5
    assert cpu_quota(root, "0::/kubepods\n") is None
    assert cpu_quota(root, "0::/\n") is None
    assert cpu_quota(root, "0::/gone\n") is None  # not there: unknown, no limit


def test_cpu_quota_v1_reads_the_mount_a_container_sees(tmp_path: Path) -> None:
    """cgroup v1: the host's path of the cgroup may not exist in a container, whose cpu mount is
    its own cgroup; a quota of -1 is no limit."""
    from dagserve.workers import cpu_quota

    root = _write(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n") == 2.0
    root = _write(tmp_path / "host", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n",
                                      "cpu/job/cpu.cfs_quota_us": "50000\n", "cpu/job/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, "3:cpu:/job\n") == 0.5
    assert cpu_quota(root, "3:cpu:/\n") is None


def test_auto_workers_never_exceed_the_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a CPU's quota is one worker, however many cores the affinity allows; no quota is
    one per core."""
    from dagserve import workers

    monkeypatch.setattr(workers, "cpu_quota", lambda: 0.5)
    assert workers.auto_workers() == 1
    monkeypatch.setattr(workers, "cpu_quota", lambda: None)
    assert workers.auto_workers() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(workers, "cpu_quota", lambda: 64.0)
    assert workers.auto_workers() == len(os.sched_getaffinity(0))


def large_request(module: Any, seed: int) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Inputs of ``large_one`` (4 MB of FP32, 4 MB of INT64, 3,000 BYTES elements) and the
    outputs it must answer."""
    rng = np.random.default_rng(seed)
    a = rng.random(1_000_000, dtype=np.float32)
    b = rng.integers(-(2**40), 2**40, (500, 1000))
    s = np.array([rng.bytes(int(n)) for n in rng.integers(0, 200, 3000)], dtype=object)
    inputs = []
    for name, array, datatype in (("A", a, "FP32"), ("B", b, "INT64"), ("S", s, "BYTES")):
        inp = module.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs, {"A_SAME": a, "A2": a * 2, "B_NEG": -b, "S_REV": np.array([x[::-1] for x in s], dtype=object)}


def answer_large(client: Any, module: Any, seed: int) -> int:
    """One request to ``large_one`` whose outputs are checked; the pid that answered."""
    inputs, expected = large_request(module, seed)
    result = client.infer("large_one", inputs, **({"client_timeout": DEADLINE} if module is grpcclient else {}))
    for name, array in expected.items():
        got = result.as_numpy(name)
        assert got.shape == array.shape, name
        assert (got.tolist() == array.tolist()) if array.dtype == object else np.array_equal(got, array), name
    return int(result.as_numpy("PID")[0])


def client_of_the_other_worker(module: Any, url: str, owner: int) -> Any:
    """A client whose connection reached a worker other than ``owner`` (fresh ones until one does)."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        client = (httpclient.InferenceServerClient(url, concurrency=1, network_timeout=DEADLINE)
                  if module is httpclient else grpcclient.InferenceServerClient(url))
        try:
            inp = module.InferInput("X", [1], "FP32")
            inp.set_data_from_numpy(np.array([1.0], dtype=np.float32))
            pid = int(client.infer("whoami", [inp]).as_numpy("PID")[0])
        except InferenceServerException:
            pid = owner  # that worker is not ready yet
        if pid != owner:
            return client
        client.close()
    raise AssertionError("no connection reached a worker other than worker 0")


def until_answered(call: Callable[[], int]) -> int:
    """``call()`` until it succeeds (a killed worker is being started again meanwhile)."""
    end = time.monotonic() + DEADLINE
    while True:
        try:
            return call()
        except InferenceServerException:
            if time.monotonic() > end:
                raise


def test_large_tensors_cross_to_a_model_placed_one_and_back(serve: Callable[..., Served]) -> None:
    """Tensors of several MB in several datatypes, sent over HTTP and gRPC to the worker that
    does not serve ``large_one``, reach worker 0 and come back exact, request after request
    (one output is a view of its input); no buffer file stays in the workers' directory, also
    after worker 0 and then the other worker were killed and started again."""
    scratch = Path(tempfile.mkdtemp(prefix="ds-"))  # short: Unix socket paths are limited
    try:
        served = serve("workers", "--workers", "2", env={"TMPDIR": str(scratch)})
        (directory,) = scratch.glob("dagserve-workers-*")
        http_url, grpc_url = served.addresses["HTTP"], served.addresses["gRPC"]

        def owner() -> int:
            with grpcclient.InferenceServerClient(grpc_url) as client:
                return until_answered(lambda: answer_large(client, grpcclient, 0))

        def through_the_other_worker(rounds: int) -> None:
            pid = owner()
            for module, url in ((httpclient, http_url), (grpcclient, grpc_url)):
                client = client_of_the_other_worker(module, url, pid)
                try:
                    for seed in range(rounds):
                        call = functools.partial(answer_large, client, module, seed)
                        assert until_answered(call) == pid
                finally:
                    client.close()

        def buffer_files() -> list[str]:
            return [p.name for p in directory.iterdir() if p.name.startswith("forward-")]

        through_the_other_worker(4)
        assert buffer_files() == []
        for index in (0, 1):
            victim = int(re.search(r"worker processes \(pids (\d+), (\d+)\)", served.output()).group(1 + index))  # type: ignore[union-attr]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda victim=victim: f"(pid {victim}) was killed by SIGKILL" in served.output(), "the restart")
            through_the_other_worker(2)
            assert buffer_files() == []
        assert "resource_tracker" not in served.output()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


HELD_ONE_CONFIG = """\
# Y = X + 1, served by worker 0 only, one request at a time
backend: python
parameters: {placement: one}
instance_group: [{count: 1, kind: KIND_CPU}]
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: Y, datatype: FP32, shape: [-1]}]
"""

HELD_ONE_MODEL = '''\
"""Each request's id is appended to $DAGSERVE_TEST_GATE/calls as it starts; one whose X[0] is
negative creates .../started and is held until .../release exists."""
import os
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        gate = Path(os.environ["DAGSERVE_TEST_GATE"])
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            with open(gate / "calls", "a") as calls:
                calls.write(request.request_id() + "\\n")
            if x[0] < 0:
                (gate / "started").touch()
                while not (gate / "release").exists():
                    time.sleep(0.01)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return responses
'''


def test_request_ids_and_deadlines_cross_to_the_worker_that_owns_a_model(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """A request for a model placed ``one`` that reaches another worker keeps its id in worker
    0 (the model records it, the answer carries it); and when its gRPC deadline passes while it
    waits in worker 0 behind a held request, worker 0 drops it unrun: the cancellation crosses
    too."""
    from dagserve.testing import FileGate

    repo = tmp_path / "repo"
    for name in ("whoami", "whoami_one"):
        shutil.copytree(REPOS / "workers" / name, repo / name)
    (repo / "held_one" / "1").mkdir(parents=True)
    (repo / "held_one" / "config.yaml").write_text(HELD_ONE_CONFIG)
    (repo / "held_one" / "1" / "model.py").write_text(HELD_ONE_MODEL)
    gate = FileGate(tmp_path / "gate")
    served = serve(repo, "--workers", "2", env={"DAGSERVE_TEST_GATE": str(gate.path)})
    grpc_url, metrics_url = served.addresses["gRPC"], served.addresses["metrics"]

    def x(value: float) -> list[Any]:
        tensor = grpcclient.InferInput("X", [1], "FP32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.float32))
        return [tensor]

    def held_one(client: Any, value: float, request_id: str, timeout: float = DEADLINE) -> Any:
        return client.infer("held_one", x(value), request_id=request_id, client_timeout=timeout)

    def pending() -> float:
        return metric(metrics_url, "nv_inference_pending_request_count", "held_one")

    with grpcclient.InferenceServerClient(grpc_url) as first:
        owner = until_answered(lambda: int(first.infer("whoami_one", x(1.0)).as_numpy("PID")[0]))
    other = client_of_the_other_worker(grpcclient, grpc_url, owner)
    holder = grpcclient.InferenceServerClient(grpc_url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(held_one, holder, -1.0, "held-A")
            gate.wait_started(DEADLINE)  # worker 0's one instance is busy with it
            late = pool.submit(held_one, other, 5.0, "late-B", 10.0)
            wait_for(lambda: pending() >= 1, "the late request to wait in worker 0")
            with pytest.raises(InferenceServerException, match="(?i)deadline"):
                late.result(DEADLINE)
            wait_for(lambda: pending() == 0, "worker 0 to drop the late request")
            gate.release()
            np.testing.assert_array_equal(held.result(DEADLINE).as_numpy("Y"), [0.0])
            after = held_one(other, 2.0, "after-C")
        finally:
            gate.release()
            holder.close()
            other.close()
    np.testing.assert_array_equal(after.as_numpy("Y"), [3.0])
    assert after.get_response().id == "after-C"
    assert gate.calls() == ["held-A", "after-C"], "the late request must not run; ids as sent"


SLOW_LOAD_MODEL = '''\
"""whoami, whose load worker 1 holds until $DAGSERVE_TEST_GATE/release exists."""
import os
import time
from pathlib import Path

import numpy as np


class Model:
    def __init__(self, context):
        if os.environ.get("DAGSERVE_WORKER_INDEX") == "1":
            gate = Path(os.environ["DAGSERVE_TEST_GATE"])
            (gate / "started").touch()
            while not (gate / "release").exists():
                time.sleep(0.01)

    def infer(self, inputs):
        return {"Y": inputs["X"] + 1, "PID": np.array([os.getpid()], dtype=np.int64)}
'''


def test_no_worker_listens_until_every_worker_has_loaded(tmp_path: Path) -> None:
    """At the start a worker that has loaded its models waits for the others before it
    listens: while worker 1 is still loading, worker 0 (loaded) refuses connections instead
    of answering health checks for the whole server and keeping every connection a client
    opens meanwhile; once worker 1 has loaded, both serve."""
    from dagserve.testing import FileGate

    repo = tmp_path / "repo"
    (repo / "whoami" / "1").mkdir(parents=True)
    shutil.copy(REPOS / "workers" / "whoami" / "config.yaml", repo / "whoami" / "config.yaml")
    (repo / "whoami" / "1" / "model.py").write_text(SLOW_LOAD_MODEL)
    gate = FileGate(tmp_path / "gate")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--workers", "2",
         "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DAGSERVE_TEST_GATE": str(gate.path)},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("waiting for the other workers" in line for line in lines) or proc.poll() is not None,
                 "worker 0 to wait for worker 1")
        assert proc.poll() is None, "".join(lines)
        wait_for(lambda: gate.started, "worker 1 to be loading")  # (it may start after worker 0 waits)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
        gate.release()
        wait_for(lambda: any("HTTP service listening" in line for line in lines) or proc.poll() is not None,
                 "the server to start")
        pids, _ = until_every_worker(lambda: whoami_http(f"127.0.0.1:{port}"), 2)
        assert len(pids) == 2
    finally:
        gate.release()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(DEADLINE) == 0, "".join(lines)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(DEADLINE)
            assert proc.stdout is not None
            proc.stdout.close()


HELD_PID_MODEL = '''\
"""Y = X + 1 and PID = this worker's pid; a request whose X[0] is negative appends a line to
$DAGSERVE_TEST_GATE/held and is held until .../release exists."""
import os
import time
from pathlib import Path

import numpy as np


class Model:
    def __init__(self, context):
        pass

    def infer(self, inputs):
        x = inputs["X"]
        if x[0] < 0:
            gate = Path(os.environ["DAGSERVE_TEST_GATE"])
            with open(gate / "held", "a") as held:
                held.write("%d\\n" % os.getpid())
            while not (gate / "release").exists():
                time.sleep(0.01)
        return {"Y": x + 1, "PID": np.array([os.getpid()], dtype=np.int64)}
'''


class _HeldPid:
    """A ``--workers 2`` server of ``held_pid`` (two instances of :data:`HELD_PID_MODEL`) and
    its gate, for the tests of the gRPC relay."""

    def __init__(self, serve: Callable[..., Served], tmp_path: Path, relay: bool = True) -> None:
        from dagserve.testing import FileGate

        repo = tmp_path / "repo"
        (repo / "held_pid" / "1").mkdir(parents=True)
        (repo / "held_pid" / "config.yaml").write_text(
            (REPOS / "workers" / "whoami" / "config.yaml").read_text() + "instance_group: [{count: 2, kind: KIND_CPU}]\n")
        (repo / "held_pid" / "1" / "model.py").write_text(HELD_PID_MODEL)
        self.gate = FileGate(tmp_path / "gate")
        self.served = serve(repo, "--workers", "2", "--grpc-server", "native", "--worker-relay", str(relay).lower(),
                            env={"DAGSERVE_TEST_GATE": str(self.gate.path)})

    @staticmethod
    def x(value: float) -> list[Any]:
        tensor = grpcclient.InferInput("X", [1], "FP32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.float32))
        return [tensor]

    def held(self) -> list[int]:
        """The pids of the workers that took the held calls, in order."""
        path = self.gate.path / "held"
        return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("relay", [True, False])
def test_calls_of_one_grpc_connection_are_relayed_to_an_idle_worker(
    serve: Callable[..., Served], tmp_path: Path, relay: bool
) -> None:
    """A worker that runs a call of a gRPC connection while another runs none hands the next
    call, as it came, to that one (``--worker-relay``, the default): the answer comes back
    through the connection's worker, from the other worker's pid. A relayed call whose
    deadline passes while it runs there ends DEADLINE_EXCEEDED. With ``--worker-relay false``
    every call runs where its connection is."""
    server = _HeldPid(serve, tmp_path, relay)
    served, gate, x, held = server.served, server.gate, server.x, server.held

    def pid(result: Any) -> int:
        return int(result.as_numpy("PID")[0])

    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        here = until_answered(lambda: pid(client.infer("held_pid", x(1.0))))  # the connection's worker
        try:
            first = pool.submit(client.infer, "held_pid", x(-1.0), client_timeout=DEADLINE)
            wait_for(lambda: len(held()) == 1, "the held call")
            assert held() == [here], "a call runs where its connection is while that worker is idle"
            second = client.infer("held_pid", x(5.0), client_timeout=DEADLINE)
            np.testing.assert_array_equal(second.as_numpy("Y"), [6.0])
            if not relay:
                assert pid(second) == here
                return
            other = pid(second)
            assert other != here, "the second call must run on the idle worker"
            stats = client.get_inference_statistics("held_pid", as_json=True)["model_stats"][0]["inference_stats"]
            assert int(stats["success"]["count"]) == 2, "summed over the workers, the relayed call counted once"
            with pytest.raises(InferenceServerException, match="(?i)deadline"):
                client.infer("held_pid", x(-3.0), client_timeout=1.0)
            assert held() == [here, other], "the held relayed call ran on the other worker"
        finally:
            gate.release()
        assert pid(first.result(DEADLINE)) == here
        assert pid(client.infer("held_pid", x(7.0))) in (here, other)


def test_a_relayed_call_in_flight_at_sigterm_is_answered(serve: Callable[..., Served], tmp_path: Path) -> None:
    """At SIGTERM the worker running a relayed call lets it finish before it stops (it has no
    connection of its own to wait for), and the connection's worker passes its answer on: a
    call held in each worker when the signal comes, one of them relayed, both answered once
    released, and the server exits 0."""
    server = _HeldPid(serve, tmp_path)
    served, gate, x, held = server.served, server.gate, server.x, server.held
    url = served.addresses["gRPC"]

    def refused() -> bool:  # both workers stopping: neither listens any more
        try:
            socket.create_connection(tuple(url.rsplit(":", 1)), timeout=DEADLINE).close()  # type: ignore[arg-type]
        except ConnectionError:
            return True
        return False

    with grpcclient.InferenceServerClient(url) as client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        until_answered(lambda: int(client.infer("held_pid", x(1.0)).as_numpy("PID")[0]))
        try:
            calls = [pool.submit(client.infer, "held_pid", x(-1.0), client_timeout=DEADLINE)]
            wait_for(lambda: len(held()) == 1, "the first held call")
            calls.append(pool.submit(client.infer, "held_pid", x(-2.0), client_timeout=DEADLINE))
            wait_for(lambda: len(held()) == 2, "the second held call")
            assert len(set(held())) == 2, "the second call is relayed to the other worker"
            served.proc.send_signal(signal.SIGTERM)
            wait_for(refused, "both workers to stop listening")
        finally:
            gate.release()
        answers = [call.result(DEADLINE) for call in calls]
    assert [float(a.as_numpy("Y")[0]) for a in answers] == [0.0, -1.0]
    assert [int(a.as_numpy("PID")[0]) for a in answers] == held()
    assert served.proc.wait(DEADLINE) == 0, served.output()


def test_a_relayed_call_whose_worker_dies_fails_unavailable_and_others_go_on(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """The worker running a relayed call is killed: that call fails UNAVAILABLE naming the
    worker (it may have run), the connection's own call is answered, the worker is started
    again, and later calls are answered."""
    server = _HeldPid(serve, tmp_path)
    served, gate, x, held = server.served, server.gate, server.x, server.held

    with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        here = until_answered(lambda: int(client.infer("held_pid", x(1.0)).as_numpy("PID")[0]))
        try:
            own = pool.submit(client.infer, "held_pid", x(-1.0), client_timeout=DEADLINE)
            wait_for(lambda: len(held()) == 1, "the connection's worker to hold a call")
            relayed = pool.submit(client.infer, "held_pid", x(-2.0), client_timeout=DEADLINE)
            wait_for(lambda: len(held()) == 2, "the relayed call to be held")
            other = held()[1]
            assert other != here
            os.kill(other, signal.SIGKILL)
            with pytest.raises(InferenceServerException, match=r"(?s)UNAVAILABLE.*worker \d+, which ran this call"):
                relayed.result(DEADLINE)
        finally:
            gate.release()
        assert int(own.result(DEADLINE).as_numpy("PID")[0]) == here
        wait_for(lambda: "starting it again" in served.output(), "the supervisor to restart the worker")
        answer = until_answered(lambda: float(client.infer("held_pid", x(3.0)).as_numpy("Y")[0]))
    assert answer == 4.0


def test_a_channel_caller_that_leaves_before_asking_is_not_an_error(serve: Callable[..., Served]) -> None:
    """A connection to a worker's channel that closes before a whole call (a peer that gave
    up, or is stopping) is dropped quietly: no traceback in the log, and the channel still
    answers the next call (statistics gathered from both workers)."""
    import socket as socket_module

    scratch = Path(tempfile.mkdtemp(prefix="ds-"))  # short: Unix socket paths are limited
    try:
        served = serve("workers", "--workers", "2", env={"TMPDIR": str(scratch)})
        (directory,) = scratch.glob("dagserve-workers-*")
        until_every_worker(lambda: whoami_http(served.addresses["HTTP"]), 2)
        for index in (0, 1):
            for sent in (b"", b'{"op": "statis'):
                with socket_module.socket(socket_module.AF_UNIX) as peer:
                    peer.connect(str(directory / f"worker-{index}.sock"))
                    peer.sendall(sent)
        with grpcclient.InferenceServerClient(served.addresses["gRPC"]) as client:
            stats = client.get_inference_statistics("whoami", as_json=True)["model_stats"]
        assert int(stats[0]["inference_stats"]["success"]["count"]) >= 2
        assert "Traceback" not in served.output() and "call failed" not in served.output()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
