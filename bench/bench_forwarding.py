"""How a forwarded request's tensors cross between workers: through the socket or in shared memory.

Serves a model placed ``one`` (worker 0 has it; an identity: its output is its FP32 input)
with ``dagserve serve --workers 2 --python-execution inline``, once with
``--worker-shm-min-bytes 2147483647`` (every tensor copied through the forwarding socket, as
before shared memory) and once with ``--worker-shm-min-bytes 1`` (every tensor in the shared
buffers), one server at a time, in alternating rounds. Each client thread holds a gRPC
connection that reached the *other* worker (found with the replicated ``whoami`` model), so
every request measured is forwarded, and sends one tensor of each size for a few seconds.
Prints req/s and the server's CPU time per request (all its processes) per size, and the ratios
shm / socket (medians over the rounds). The Python client's own cost of a large tensor bounds
the req/s on a small machine; the CPU per request and the first table show the hop itself:
the forwarding connection alone (``dagserve.forwarding.Connection``) between two processes,
one echoing what the other sends, round trips per second.

Run: python bench/bench_forwarding.py [--rounds 2] [--seconds 3] [--clients 2]
     [--sizes 4096,65536,262144,4194304]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio
import anyio.abc
import numpy as np
import tritonclient.grpc as grpcclient

from dagserve.forwarding import Connection
from dagserve.types import DataType

sys.path.insert(0, str(Path(__file__).parent))
from _serverproc import start

MODES = {"socket": "2147483647", "shm": "1"}

ECHO = """\
backend: python
parameters: {placement: one}
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: Y, datatype: FP32, shape: [-1]}]
"""
ECHO_MODEL = """\
class Model:
    def __init__(self, context):
        pass

    def infer(self, inputs):
        return {"Y": inputs["X"]}
"""
WHOAMI = """\
backend: python
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: PID, datatype: INT64, shape: [1]}]
"""
WHOAMI_MODEL = """\
import os

import numpy as np


class Model:
    def __init__(self, context):
        pass

    def infer(self, inputs):
        return {"PID": np.array([os.getpid()], dtype=np.int64)}
"""


def repository(into: Path) -> Path:
    for name, config, model in (("echo_one", ECHO, ECHO_MODEL), ("whoami", WHOAMI, WHOAMI_MODEL)):
        (into / name / "1").mkdir(parents=True)
        (into / name / "config.yaml").write_text(config)
        (into / name / "1" / "model.py").write_text(model)
    return into


def call(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, output: str) -> np.ndarray:
    inp = grpcclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], client_timeout=60).as_numpy(output)


def forwarding_clients(url: str, count: int, owner: int) -> list[grpcclient.InferenceServerClient]:
    """``count`` clients whose connections reached a worker other than ``owner`` (worker 0's pid)."""
    clients: list[grpcclient.InferenceServerClient] = []
    while len(clients) < count:
        client = grpcclient.InferenceServerClient(url)
        if int(call(client, "whoami", np.ones(1, np.float32), "PID")[0]) != owner:
            clients.append(client)
        else:
            client.close()
    return clients


def measure(clients: list[grpcclient.InferenceServerClient], size: int, seconds: float) -> float:
    x = np.random.default_rng(size).random(size // 4, dtype=np.float32)
    for client in clients:  # warm: buffers made, pages touched
        np.testing.assert_array_equal(call(client, "echo_one", x, "Y"), x)
    counts = [0] * len(clients)
    stop = time.monotonic() + seconds

    def drive(i: int) -> None:
        while time.monotonic() < stop:
            call(clients[i], "echo_one", x, "Y")
            counts[i] += 1

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(clients))]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - began)


async def _echo(sock: socket.socket, directory: Path, min_bytes: int) -> None:
    end = Connection(await anyio.abc.UNIXSocketStream.from_socket(sock), directory, "0-1", shm_min_bytes=min_bytes)
    while True:
        try:
            received = await end.receive()
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return
        tensors = received.take()
        frame = end.pack({}, [(name, DataType.FP32, array) for name, array in tensors.items()])
        del tensors
        await end.send(frame)


async def _drive(sock: socket.socket, directory: Path, min_bytes: int, size: int, seconds: float) -> float:
    end = Connection(await anyio.abc.UNIXSocketStream.from_socket(sock), directory, "1-2", shm_min_bytes=min_bytes)
    x = np.random.default_rng(size).random(size // 4, dtype=np.float32)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        await end.send(end.pack({}, [("X", DataType.FP32, x)]))
        y = (await end.receive()).take()["X"]
        if count == 0:
            np.testing.assert_array_equal(y, x)
        del y
        count += 1
    rate = count / (time.perf_counter() - began)
    await end.aclose()
    return rate


def hop(mode: str, size: int, seconds: float) -> float:
    """Round trips per second of one ``size``-byte tensor between two processes."""
    with tempfile.TemporaryDirectory() as directory:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child = os.fork()
        if child == 0:  # the echo: worker 0's part
            a.close()
            anyio.run(_echo, b, Path(directory), int(MODES[mode]))
            os._exit(0)
        b.close()
        try:
            return anyio.run(_drive, a, Path(directory), int(MODES[mode]), size, seconds)
        finally:
            os.waitpid(child, 0)


def run(repo: Path, mode: str, args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    server = start(repo, "--workers", "2", "--python-execution", "inline", "--worker-shm-min-bytes", MODES[mode])
    try:
        pids = None
        while pids is None:  # the banner follows the addresses
            pids = next((m for line in server.lines if (m := re.search(r"worker processes \(pids (\d+),", line))), None)
            time.sleep(0.05)
        clients = forwarding_clients(server.grpc, args.clients, int(pids.group(1)))
        try:
            out = {}
            for size in args.sizes:
                cpu = server.tree_cpu_seconds()
                rate = measure(clients, size, args.seconds)
                out[size] = (rate, (server.tree_cpu_seconds() - cpu) / (rate * args.seconds) * 1e6)
            return out
        finally:
            for client in clients:
                client.close()
    finally:
        server.stop()


def label(size: int) -> str:
    return f"{size // 1024} KiB" if size < 1 << 20 else f"{size >> 20} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--sizes", type=lambda v: [int(s) for s in v.split(",")], default=[4096, 65536, 262144, 4194304])
    args = parser.parse_args()
    hops: dict[str, dict[int, list[float]]] = {mode: {size: [] for size in args.sizes} for mode in MODES}
    served: dict[str, dict[int, list[tuple[float, float]]]] = {mode: {size: [] for size in args.sizes} for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        repo = repository(Path(tmp))
        for r in range(args.rounds):
            for mode in (MODES if r % 2 == 0 else reversed(MODES)):
                for size in args.sizes:
                    hops[mode][size].append(hop(mode, size, args.seconds / 2))
                for size, result in run(repo, mode, args).items():
                    served[mode][size].append(result)
                print(f"round {r + 1}: {mode} done", file=sys.stderr, flush=True)
    print(f"the hop alone: one FP32 tensor there and back between two processes, medians of {args.rounds} rounds")
    print(f"{'tensor':>10}  {'socket /s':>10}  {'shm /s':>10}  shm / socket")
    for size in args.sizes:
        sock, shm = (statistics.median(hops[mode][size]) for mode in ("socket", "shm"))
        print(f"{label(size):>10}  {sock:10.0f}  {shm:10.0f}  x{shm / sock:.2f}")
    print(f"\nserved: echo_one placed 'one', --workers 2, {args.clients} gRPC clients on the forwarding worker, "
          f"medians of {args.rounds} rounds of {args.seconds:g} s; CPU = the server's processes' CPU per request")
    print(f"{'tensor':>10}  {'socket req/s':>12}  {'shm req/s':>10}  {'ratio':>6}  {'socket CPU':>10}  {'shm CPU':>10}  ratio")
    for size in args.sizes:
        (sock, sock_cpu), (shm, shm_cpu) = (
            (statistics.median(r for r, _ in served[m][size]), statistics.median(c for _, c in served[m][size]))
            for m in ("socket", "shm")
        )
        print(f"{label(size):>10}  {sock:12.1f}  {shm:10.1f}  x{shm / sock:.2f}  {sock_cpu:8.0f}us  {shm_cpu:8.0f}us  "
              f"x{shm_cpu / sock_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
