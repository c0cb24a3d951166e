"""Server CPU per ``/infer`` request on the HTTP path alone: no client, no network, the engine
stubbed out.

One connection of the server's protocol object (dagserve's own, or uvicorn's httptools
protocol serving the same routes and :class:`~dagserve.frontends.http.infer.InferCore` as a
plain ASGI endpoint) is fed a binary ``tritonclient``-style request through a fake transport,
request after request (c=1). Prints CPU and wall µs per request; with ``OPCODES=1`` also the
Python bytecodes executed per request (independent of machine load; frames created during the
run only, so compare a server with itself, e.g. two trees, not one server with another).
docs/performance.md ("HTTP server choice") has the figures.

Run: python bench/bench_http_path.py [N] [own|uvicorn]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

REPO = Path(__file__).resolve().parent / "repos" / "identity"
X = np.arange(16, dtype=np.float32)
LIMIT = 256 * 1024 * 1024


class _Transport:
    """Enough of an asyncio transport; sets ``event`` when the response body has gone out."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def write(self, data: bytes) -> None:
        if data.endswith(X.tobytes()):
            self.event.set()

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def get_extra_info(self, *args: Any, **kwargs: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


def _request() -> bytes:
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    body = header + X.tobytes()
    return (b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: localhost:8000\r\n"
            b"User-Agent: python/gevent-http-client-2\r\nContent-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(header), len(body))) + body


def _uvicorn_protocol(server: Any) -> Any:
    import uvicorn
    from bench_frontends import uvicorn_app  # beside this file
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = uvicorn.Config(uvicorn_app(server), http="httptools", lifespan="off", log_level="warning",
                            access_log=False, server_header=False, date_header=False, proxy_headers=False)
    return HttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())


async def main(n: int, mode: str) -> None:
    from dagserve import Server
    from dagserve.frontends.http.infer import InferCore
    from dagserve.frontends.http.routes import create_app
    from dagserve.frontends.http.server import _Connection, _State
    from dagserve.frontends.limits import HttpLimits
    from dagserve.types import DataType, InferResponse

    async with Server(model_repository=REPO) as server, anyio.create_task_group() as tg:
        async def stub(model: str, version: str, request: Any) -> InferResponse:
            return InferResponse(model_name=model, model_version="1", outputs={"OUTPUT0": request.inputs["INPUT0"]},
                                 datatypes={"OUTPUT0": DataType.FP32}, id=request.id)

        server.infer = stub  # type: ignore[method-assign]
        if mode == "uvicorn":
            conn = _uvicorn_protocol(server)
        else:
            conn = _Connection(_State(create_app(server, max_body_size=LIMIT), InferCore(server, LIMIT), tg,
                                      HttpLimits(), LIMIT))
        transport = _Transport()
        conn.connection_made(transport)
        data = _request()
        opcodes = 0

        def trace(frame: Any, event: str, arg: Any) -> Any:
            nonlocal opcodes
            frame.f_trace_opcodes = True
            opcodes += event == "opcode"
            return trace

        for rounds in (2000, n):  # warm-up, then the measurement
            if rounds == n and os.environ.get("OPCODES"):
                sys.settrace(trace)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(rounds):
                transport.event = anyio.Event()
                conn.data_received(data)
                await transport.event.wait()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sys.settrace(None)
        print(f"{mode}: {1e6 * cpu / n:.1f} µs CPU, {1e6 * wall / n:.1f} µs wall per request ({n})"
              + (f", {opcodes / n:.0f} Python bytecodes per request" if opcodes else ""), flush=True)
        conn.connection_lost(None)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0].replace("\n", " "))
    parser.add_argument("requests", nargs="?", type=int, default=20000, help="requests to time (default 20000)")
    parser.add_argument("server", nargs="?", default="own", help="own (dagserve's server) or uvicorn (default own)")
    args = parser.parse_args()
    anyio.run(main, args.requests, args.server, backend_options={"use_uvloop": True})
