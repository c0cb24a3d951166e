"""What the HTTP and gRPC frontends cost: a trivial model called in process vs over the wire.

Serves ``bench/repos/identity`` (a Python identity model) in a subprocess and drives it with
tritonclient's asyncio clients (binary HTTP and gRPC) at concurrency 1 and 16; the same
model is also called in this process through ``Server.infer``. Prints requests/s for each and
the ratio of each frontend to the in-process call: the share of the server's work that is the
model and engine rather than the protocol. Client and server share the machine's cores.

Run: python bench/bench_frontends.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent / "repos" / "identity"
HTTP, GRPC = 8720, 8721
X = np.arange(16, dtype=np.float32)


async def closed_loop(call, concurrency: int, seconds: float) -> float:
    """Requests per second of ``concurrency`` loops each awaiting ``call()`` back to back."""
    for _ in range(20):
        await call()
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def in_process(seconds: float) -> dict[int, float]:
    from dagserve import InferRequest, Server

    request = InferRequest(inputs={"INPUT0": X})
    async with Server(model_repository=REPO) as server:
        return {c: await closed_loop(lambda: server.infer("identity", "", request), c, seconds) for c in (1, 16)}


async def over_http(seconds: float) -> dict[int, float]:
    import tritonclient.http as http
    import tritonclient.http.aio as http_aio

    client = http_aio.InferenceServerClient(f"127.0.0.1:{HTTP}", conn_limit=16)
    x = http.InferInput("INPUT0", [16], "FP32")
    x.set_data_from_numpy(X, binary_data=True)
    out = [http.InferRequestedOutput("OUTPUT0", binary_data=True)]
    try:
        return {c: await closed_loop(lambda: client.infer("identity", [x], outputs=out), c, seconds) for c in (1, 16)}
    finally:
        await client.close()


async def over_grpc(seconds: float) -> dict[int, float]:
    import tritonclient.grpc as grpc
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(f"127.0.0.1:{GRPC}")
    x = grpc.InferInput("INPUT0", [16], "FP32")
    x.set_data_from_numpy(X)
    try:
        return {c: await closed_loop(lambda: client.infer("identity", [x]), c, seconds) for c in (1, 16)}
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    results = {"in-process": asyncio.run(in_process(args.seconds))}
    server = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port", str(HTTP),
         "--grpc-port", str(GRPC), "--metrics-port", "-1", "--log-level", "warning"],
        env=dict(os.environ), stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{HTTP}/v2/health/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        results["http"] = asyncio.run(over_http(args.seconds))
        results["grpc"] = asyncio.run(over_grpc(args.seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)
    base = results["in-process"]
    for name, rates in results.items():
        line = "  ".join(f"c={c:<2d} {r:8.0f} req/s (x{r / base[c]:.2f} of in-process)" for c, r in rates.items())
        print(f"{name:10s} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
