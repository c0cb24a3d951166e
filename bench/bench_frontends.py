"""What the HTTP and gRPC frontends cost: a trivial model called in process vs over the wire.

Serves ``bench/repos/identity`` (a Python identity model) in a subprocess and drives it with
tritonclient's asyncio clients (binary HTTP and gRPC) at concurrency 1 and 16; the same
model is also called in this process through ``Server.infer``. Prints requests/s for each and
the ratio of each frontend to the in-process call: the share of the server's work that is the
model and engine rather than the protocol. Client and server share the machine's cores.

``--servers`` compares HTTP servers on the same routes: dagserve's own (``dagserve serve``)
against uvicorn (httptools parser, uvloop) serving the same starlette app with ``/infer`` as
a plain ASGI endpoint over the same :class:`~dagserve.frontends.http.infer.InferCore`, in
alternating rounds (``--rounds``); docs/performance.md ("HTTP server choice") has the figures.
``--http-only`` skips gRPC (e.g. to compare two trees' HTTP servers: run it with
``PYTHONPATH`` at each tree, alternately). gRPC is measured on both gRPC servers:
``grpc`` (grpcio's grpc.aio) and ``grpc-native`` (``--grpc-server native``), in the same
alternating rounds, each with the server's CPU per request.

Run: python bench/bench_frontends.py [--seconds 3] [--servers] [--rounds 3] [--http-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def uvicorn_app(server: Any) -> Any:
    """The ASGI app uvicorn serves in the comparison: the starlette app of every other route,
    and ``/infer`` as a plain ASGI endpoint over the same ``InferCore`` the own server calls."""
    from dagserve.frontends.http.infer import InferCore
    from dagserve.frontends.http.routes import create_app

    limit = 256 * 1024 * 1024
    core = InferCore(server, limit)
    app = create_app(server, max_body_size=limit)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        target = core.target(scope["path"]) if scope.get("method") == "POST" else None
        if target is None:
            return await app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        reply = await core.reply(target[0], target[1], scope["headers"], b"".join(chunks))
        headers = [*reply.headers, (b"content-length", b"%d" % len(reply.body))]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    return asgi


def _serve_uvicorn(port: int) -> None:
    """Serve the identity repository over HTTP with uvicorn (httptools, uvloop) and
    :func:`uvicorn_app`."""
    import anyio
    import uvicorn

    from dagserve import Server
    from dagserve.frontends.http.server import bind

    async def main() -> None:
        async with Server(model_repository=REPO) as server:
            config = uvicorn.Config(uvicorn_app(server), host="127.0.0.1", port=port, http="httptools", loop="none",
                                    lifespan="off", log_level="warning", access_log=False, server_header=False,
                                    date_header=False, proxy_headers=False)
            # Bound here with proto=IPPROTO_TCP, as dagserve binds: TCP_NODELAY on accepted
            # sockets, else Nagle holds uvicorn's second write (the body) for a delayed ACK.
            await uvicorn.Server(config).serve(sockets=[bind("127.0.0.1", port)])

    anyio.run(main, backend_options={"use_uvloop": True})


def _start(command: list[str]) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{HTTP}/v2/health/ready", timeout=1)
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not become ready")


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=30)


def _own_server(grpc: bool, grpc_server: str = "grpcio") -> subprocess.Popen[bytes]:
    return _start([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port",
                   str(HTTP), "--grpc-port", str(GRPC) if grpc else "-1", "--metrics-port", "-1",
                   "--grpc-server", grpc_server,
                   "--log-level", "warning", "--workers", "1"])  # one process: its frontends vs in-process calls


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print(results: dict[str, dict[int, float]]) -> None:
    base = results["in-process"]
    for name, rates in results.items():
        line = "  ".join(f"c={c:<2d} {r:8.0f} req/s (x{r / base[c]:.2f} of in-process)" for c, r in rates.items())
        print(f"{name:10s} {line}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--servers", action="store_true", help="also measure uvicorn serving the same routes")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the HTTP measurements")
    parser.add_argument("--http-only", action="store_true", help="skip gRPC")
    parser.add_argument("--serve-uvicorn", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_uvicorn is not None:
        _serve_uvicorn(args.serve_uvicorn)
        return 0
    results: dict[str, dict[int, float]] = {"in-process": asyncio.run(in_process(args.seconds))}
    runs: dict[str, list[dict[int, float]]] = {}
    cpu: dict[str, list[float]] = {}  # server CPU µs per request, each round
    Drive = Callable[[float], Any]
    servers: list[tuple[str, Callable[[], subprocess.Popen[bytes]], Drive]] = [
        ("http", lambda: _own_server(False), over_http)]
    if args.servers:
        servers.append(("uvicorn", lambda: _start([sys.executable, __file__, "--serve-uvicorn", str(HTTP)]), over_http))
    if not args.http_only:
        servers.append(("grpc", lambda: _own_server(True, "grpcio"), over_grpc))
        servers.append(("grpc-native", lambda: _own_server(True, "native"), over_grpc))
    for round_ in range(args.rounds):
        for name, start, drive in servers:
            server = start()
            try:
                before = _cpu_seconds(server.pid)
                rates = asyncio.run(drive(args.seconds))
                used = _cpu_seconds(server.pid) - before
            finally:
                _stop(server)
            runs.setdefault(name, []).append(rates)
            cpu.setdefault(name, []).append(1e6 * used / sum(r * args.seconds for r in rates.values()))
            print(f"round {round_ + 1} {name:11s} " + "  ".join(f"c={c:<2d} {r:8.0f} req/s" for c, r in rates.items())
                  + f"  server CPU {cpu[name][-1]:5.0f} µs/request", flush=True)
    for name, rounds in runs.items():  # the median of the rounds
        results[name] = {c: statistics.median(r[c] for r in rounds) for c in rounds[0]}
    _print(results)
    for name, values in cpu.items():
        print(f"{name:10s} server CPU per request: median {statistics.median(values):.0f} µs "
              f"(rounds: {', '.join(f'{v:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
