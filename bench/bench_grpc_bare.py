"""What a gRPC server costs with nothing behind it: a bytes-identity unary method (no protobuf,
no engine), served by grpc.aio, grpcio's sync server, or dagserve's native HTTP/2 server, and
called at concurrency 16 from a grpc.aio client in another process. Prints requests/s and the
server process's CPU per call (docs/performance.md, "gRPC on dagserve's own HTTP/2 server").

Run: python bench/bench_grpc_bare.py [--seconds 5] [--servers native,aio,sync]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

METHOD = "/bench.Bare/Echo"
CONCURRENCY = 16


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _identity(request: bytes) -> bytes:
    return request


def _serve(kind: str, port: int) -> None:
    import grpc

    async def echo_async(request: bytes, context: object) -> bytes:
        return request

    if kind == "sync":
        from concurrent.futures import ThreadPoolExecutor

        server = grpc.server(ThreadPoolExecutor(CONCURRENCY))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request, _identity, _identity)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", {"Echo": handler}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return
    handler = grpc.unary_unary_rpc_method_handler(echo_async, _identity, _identity)
    if kind == "aio":
        async def main() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", {"Echo": handler}),))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(main())
        return
    import anyio

    from dagserve.frontends.grpc_native.calls import Calls, Method
    from dagserve.frontends.http.server import bind

    async def native() -> None:
        sock = bind("127.0.0.1", port)
        async with anyio.create_task_group() as tg:
            calls = Calls({METHOD.encode(): Method("Echo", handler)}, tg, max_message_size=2**31 - 1)
            await asyncio.get_running_loop().create_server(calls.protocol, sock=sock)
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(native, backend_options={"use_uvloop": True})


async def _drive(port: int, seconds: float) -> float:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        payload = b"x" * 64
        for _ in range(50):
            await call(payload)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await call(payload)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--servers", default="native,aio,sync")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
        return 0
    for kind in args.servers.split(","):
        port = 8731
        server = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            before = _cpu_seconds(server.pid)
            rate = asyncio.run(_drive(port, args.seconds))
            used = _cpu_seconds(server.pid) - before
            print(f"{kind:7s} c={CONCURRENCY} {rate:7.0f} req/s  server CPU {1e6 * used / (rate * args.seconds):4.0f} µs/call",
                  flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
