"""What a model's execution mode costs end to end: a tiny Python model over HTTP and gRPC at c16.

    python bench/bench_execution.py [--seconds 5] [--rounds 3] [--tree OTHER_CHECKOUT ...]

Serves ``bench/repos/identity`` (Triton-style identity model; a copy with ``execution`` set to
``inline`` or ``thread``) with ``dagserve serve`` and drives it with tritonclient's asyncio
clients, 16 requests in flight. With ``--tree`` the same runs are made with another checkout's
dagserve (e.g. the previous release) on PYTHONPATH, so two versions compare side by side.
Configurations are interleaved round by round, so load from elsewhere on the machine hits them
alike; prints each one's median requests/s and its ratio to the first configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serverproc

HERE = Path(__file__).resolve().parents[1]
REPO = HERE / "bench" / "repos" / "identity"
X = np.arange(16, dtype=np.float32)


async def closed_loop(call, concurrency: int, seconds: float, cpu) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Requests/s, and the server's CPU microseconds per request (``cpu()``: its CPU seconds)."""
    for _ in range(50):
        await call()
    done = 0
    cpu_start = cpu()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start), (cpu() - cpu_start) / done * 1e6


async def over_http(address: str, seconds: float, cpu) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    import tritonclient.http.aio as http_aio
    from tritonclient import http

    client = http_aio.InferenceServerClient(address, conn_limit=16)
    x = http.InferInput("INPUT0", [16], "FP32")
    x.set_data_from_numpy(X, binary_data=True)
    out = [http.InferRequestedOutput("OUTPUT0", binary_data=True)]
    try:
        return await closed_loop(lambda: client.infer("identity", [x], outputs=out), 16, seconds, cpu)
    finally:
        await client.close()


async def over_grpc(address: str, seconds: float, cpu) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    import tritonclient.grpc.aio as grpc_aio
    from tritonclient import grpc

    client = grpc_aio.InferenceServerClient(address)
    x = grpc.InferInput("INPUT0", [16], "FP32")
    x.set_data_from_numpy(X)
    try:
        return await closed_loop(lambda: client.infer("identity", [x]), 16, seconds, cpu)
    finally:
        await client.close()


Result = tuple[tuple[float, float], tuple[float, float]]  # (req/s, server CPU us/req) for http, grpc


def run_once(tree: Path, execution: str, seconds: float, tmp: Path) -> Result:
    repo = tmp / f"repo-{execution}"
    if not repo.exists():
        shutil.copytree(REPO, repo)
        config = repo / "identity" / "config.pbtxt"
        config.write_text(config.read_text() + f'parameters {{ key: "execution" value {{ string_value: "{execution}" }} }}\n')
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        server = _serverproc.start(repo)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    try:
        return (asyncio.run(over_http(server.http, seconds, server.cpu_seconds)),
                asyncio.run(over_grpc(server.grpc, seconds, server.cpu_seconds)))
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to compare")
    parser.add_argument("--modes", default="inline,thread")
    args = parser.parse_args()
    configs = [(tree, mode) for tree in [HERE, *args.tree] for mode in args.modes.split(",")]
    results: dict[tuple[Path, str], list[Result]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for config in configs:
                (h, hc), (g, gc) = run_once(config[0], config[1], args.seconds, Path(tmp))
                results[config].append(((h, hc), (g, gc)))
                print(f"  {config[0]} {config[1]}: http {h:.0f} req/s {hc:.0f} us/req  grpc {g:.0f} req/s {gc:.0f} us/req",
                      flush=True)

    def med(config: tuple[Path, str], proto: int, what: int) -> float:
        return statistics.median(r[proto][what] for r in results[config])

    first = configs[0]
    print("median over rounds; CPU = server process user+sys time per request (less sensitive to other load)")
    for config in configs:
        line = "  ".join(
            f"{name} c16 {med(config, i, 0):6.0f} req/s (x{med(config, i, 0) / med(first, i, 0):.2f}) "
            f"{med(config, i, 1):5.0f} us CPU/req (x{med(config, i, 1) / med(first, i, 1):.2f})"
            for i, name in enumerate(("http", "grpc"))
        )
        print(f"{config[0]!s:32s} {config[1]:7s} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
