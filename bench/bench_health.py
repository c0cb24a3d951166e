"""Health under overload: how fast ready and metrics answer while 256 clients hammer a model.

    python bench/bench_health.py [--seconds 20] [--concurrency 256] [--execution thread|inline] [--pipeline]

Serves ``bench/repos/identity`` (a copy, with the ``execution`` parameter when given, and
``--model-ms`` of pure-Python work per call on ``--instances`` instances) with
``dagserve serve`` on ephemeral ports. A load process keeps ``--concurrency`` keep-alive HTTP
connections each sending KServe v2 JSON inference requests back to back (closed loop). Meanwhile
this process probes ``/v2/health/ready`` and ``/metrics`` every 10 ms, each on a new connection
as a kubelet or Prometheus would, and prints their p50/p99/max latency and the load's
throughput. The goal (issue 10): p99 <= 50 ms. Client and server share the machine's cores.
With ``--pipeline`` the load goes to ``bench/repos/triton_ensemble`` (a Triton ensemble of three
sync Python steps, run as chains: docs/performance.md) instead; the model options then apply to
its classifier step.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serverproc

REPO = Path(__file__).resolve().parent / "repos" / "identity"
ENSEMBLE = Path(__file__).resolve().parent / "repos" / "triton_ensemble"
BODIES = {
    "identity": json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [16], "data": list(range(16))}]}),
    "classify": json.dumps({"inputs": [{"name": "RAW", "datatype": "UINT8", "shape": [1, 32], "data": list(range(32))}]}),
}


async def _connection(host: str, port: int, model: str, stop_at: float, counts: dict[int, int]) -> None:
    body = BODIES[model].encode()
    request = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            counts[status] = counts.get(status, 0) + 1
    except (OSError, asyncio.IncompleteReadError):
        counts[-1] = counts.get(-1, 0) + 1
    finally:
        writer.close()


def _load(address: str, model: str, concurrency: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    host, port = address.rsplit(":", 1)
    counts: dict[int, int] = {}

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_connection(host, int(port), model, stop_at, counts)
                               for _ in range(concurrency)))

    asyncio.run(main())
    out.put(counts)


def _probe(address: str, path: str) -> float:
    host, port = address.rsplit(":", 1)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
    finally:
        conn.close()
    return time.perf_counter() - start


def _summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1e3 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"{name:8s} n={len(ms):5d}  p50 {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms  "
            f"max {ms[-1]:7.2f} ms  {'OK' if p99 <= 50 else 'OVER 50 ms'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--execution", choices=["thread", "inline"], help="the model's execution parameter")
    parser.add_argument("--model-ms", type=float, default=0.0,
                        help="pure-Python work (holding the GIL) the model does per call, in ms")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--pipeline", action="store_true", help="load the three-step Triton ensemble instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ENSEMBLE if args.pipeline else REPO, repo)
        model_name = "classify" if args.pipeline else "identity"
        config = repo / ("classifier" if args.pipeline else "identity") / "config.pbtxt"
        extra = f"instance_group [ {{ count: {args.instances} kind: KIND_CPU }} ]\n"
        if args.execution:
            extra += f'parameters {{ key: "execution" value {{ string_value: "{args.execution}" }} }}\n'
        config.write_text(config.read_text() + extra)
        if args.model_ms:
            model = repo / ("classifier" if args.pipeline else "identity") / "1" / "model.py"
            model.write_text(model.read_text().replace(
                "    def execute(self, requests):\n",
                "    def execute(self, requests):\n"
                "        import time\n"
                f"        end = time.perf_counter() + {args.model_ms / 1e3}\n"
                "        while time.perf_counter() < end:\n"
                "            pass\n",
            ))
        server = _serverproc.start(repo)
        try:
            out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            load = multiprocessing.Process(target=_load, args=(server.http, model_name, args.concurrency, args.seconds + 2, out))
            load.start()
            time.sleep(2)  # let the load reach its steady state before probing
            ready: list[float] = []
            metrics: list[float] = []
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                ready.append(_probe(server.http, "/v2/health/ready"))
                metrics.append(_probe(server.metrics, "/metrics"))
                time.sleep(0.01)
            counts = out.get(timeout=120)
            load.join()
        finally:
            code = server.stop()
    total = sum(n for status, n in counts.items() if status == 200)
    print(f"load: {model_name} c{args.concurrency} over {args.seconds + 2:.0f} s, execution {args.execution or 'default'}, "
          f"model {args.model_ms} ms of Python x {args.instances} instance(s): "
          f"{total / (args.seconds + 2):.0f} req/s answered 200; statuses {dict(sorted(counts.items()))}; server exit {code}")
    print(_summary("ready", ready))
    print(_summary("metrics", metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
