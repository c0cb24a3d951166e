"""A bounded soak: sustained mixed traffic with reloads, ended by SIGTERM under load.

    python bench/soak.py [--duration 600] [--concurrency 16] [--reload-every 10] [--window 10]
        [--warmup 0] [--dagserve-args "--workers 4"]

Serves ``bench/repos/triton_ensemble`` (preprocess -> classifier -> postprocess, Triton-style
Python models, ``classify`` as a Triton ensemble) with ``dagserve serve --model-control-mode
explicit --load-model '*'`` on ephemeral ports, then for ``--duration`` seconds keeps
``--concurrency`` requests in flight, half over HTTP and half over gRPC (tritonclient's asyncio
clients). Four in five requests are valid (``classify`` on random bytes; the answer is checked
against the same arithmetic done here); the rest are invalid — wrong datatype, wrong shape,
unknown model, bad priority — and must get a client error, never a server error or a hang.
Every ``--reload-every`` seconds ``classifier`` is reloaded through the repository API.

Then, with traffic still flowing, the server gets SIGTERM; no new request is started after it,
and the ones in flight must still be answered. Prints the throughput of every window, the
worst/best window ratio (goal >= 0.8), the invalid-request outcomes, ``lost = N`` — valid
requests sent before the signal that did not get a correct answer (goal 0) — and the server's
exit code and exit time. An HTTP request that failed in transport is listed with the times
(from the signal) at which it took a new or reused connection and sent its head and body.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _serverproc

REPO = Path(__file__).resolve().parent / "repos" / "triton_ensemble"
W = np.zeros((16, 4), dtype=np.float32)
W[np.arange(16), np.arange(16) % 4] = 1.0
LABELS = [b"cat", b"dog", b"bird", b"fish"]
INVALID_KINDS = ("wrong_dtype", "wrong_shape", "unknown_model", "bad_priority")


def expected(raw: np.ndarray) -> tuple[set[bytes], float]:
    """What ``classify`` answers for one row of bytes (the models' own arithmetic): the labels
    it may give (every class tied for the top probability: the model's float rounding, in a
    batch, may break a tie another way than this one) and the top probability."""
    features = np.bincount(raw % 16, minlength=16).astype(np.float32) / max(raw.shape[0], 1)
    logits = features @ W
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = float(p.max())
    return {LABELS[k] for k in range(len(p)) if abs(float(p[k]) - top) <= 1e-6}, top


@dataclass
class Tally:
    """What one client process saw (its requests' outcomes), sent to the parent at the end."""

    valid_ok: int = 0
    lost: int = 0
    lost_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    invalid: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_http: list[dict[str, Any]] = field(default_factory=list)  # see Traffic._trace_http


@dataclass
class Shared:
    """What the parent and the client processes share while traffic flows."""

    started: float  # time.monotonic() of the first window: one clock for every process on Linux
    traffic_start: float  # when the clients begin (``--warmup`` seconds before ``started``)
    window: float
    windows: int
    clients: int
    done: Any  # multiprocessing.Array: requests finished, per client and window
    lost: Any  # multiprocessing.Array: valid requests lost so far, per client
    stop: Any  # multiprocessing.Event: start no new request
    stopped: list[Any]  # one multiprocessing.Event per client: it starts no new request

    def finished(self, client: int) -> None:
        w = int((time.monotonic() - self.started) // self.window)
        if 0 <= w < self.windows:
            self.done[client * self.windows + w] += 1

    def done_in(self, w: int) -> int:
        return sum(self.done[c * self.windows + w] for c in range(self.clients))


def _is_client_error(exc: BaseException) -> bool:
    status = str(getattr(exc, "status", lambda: "")() or "")
    return status.startswith("4") or any(
        code in status for code in ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "OUT_OF_RANGE")
    )


class Traffic:
    """One client per protocol; builds and checks requests of every kind."""

    def __init__(self, http_address: str, grpc_address: str, tally: Tally, kinds: tuple[str, ...]) -> None:
        import tritonclient.grpc.aio as grpc_aio
        import tritonclient.http.aio as http_aio
        from tritonclient import grpc, http

        self.mods = {"http": http, "grpc": grpc}
        self.clients: dict[str, Any] = {
            "http": http_aio.InferenceServerClient(http_address, conn_limit=64),
            "grpc": grpc_aio.InferenceServerClient(grpc_address),
        }
        self.tally = tally
        self.kinds = kinds
        self._trace_http()

    def _trace_http(self) -> None:
        """Record, for every HTTP request that fails in transport, when (time.monotonic()) it
        started, took its connection (a new one or a reused one) and sent its head and body,
        and how it failed: the evidence to tell a request lost by the server from one the
        client had not yet sent when the server stopped."""
        import aiohttp

        async def begin(session: Any, ctx: Any, params: Any) -> None:
            ctx.marks = {"start": time.monotonic()}

        def mark(name: str) -> Any:
            async def record(session: Any, ctx: Any, params: Any) -> None:
                ctx.marks[name] = time.monotonic()
            return record

        async def failed(session: Any, ctx: Any, params: Any) -> None:
            ctx.marks["failed"] = time.monotonic()
            ctx.marks["error"] = repr(params.exception)[:100]
            self.tally.failed_http.append(ctx.marks)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(begin)
        trace.on_connection_create_end.append(mark("new connection"))
        trace.on_connection_reuseconn.append(mark("reused connection"))
        trace.on_request_headers_sent.append(mark("head sent"))
        trace.on_request_chunk_sent.append(mark("body sent"))
        trace.on_request_exception.append(failed)
        trace.freeze()
        # tritonclient builds its aiohttp session itself and takes no trace configs
        self.clients["http"]._stub._trace_configs.append(trace)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    def _input(self, protocol: str, name: str, array: np.ndarray, datatype: str) -> Any:
        x = self.mods[protocol].InferInput(name, list(array.shape), datatype)
        if protocol == "http":
            x.set_data_from_numpy(array, binary_data=True)
        else:
            x.set_data_from_numpy(array)
        return x

    async def valid(self, protocol: str, rng: random.Random) -> None:
        raw = np.frombuffer(rng.randbytes(rng.randint(1, 64)), dtype=np.uint8)
        labels, score = expected(raw)
        try:
            result = await self.clients[protocol].infer("classify", [self._input(protocol, "RAW", raw[None, :], "UINT8")])
            got_label = result.as_numpy("LABEL").reshape(-1)[0]
            got_score = float(result.as_numpy("SCORE").reshape(-1)[0])
            if got_label not in labels or abs(got_score - score) > 1e-5:
                self._lose(f"wrong answer: {got_label!r} {got_score} != {sorted(labels)!r} {score}")
                return
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self._lose(f"{protocol}: {type(exc).__name__}: {str(exc)[:120]}")
            return
        self.tally.valid_ok += 1

    def _lose(self, reason: str) -> None:
        self.tally.lost += 1
        self.tally.lost_reasons[reason] += 1

    async def invalid(self, protocol: str, rng: random.Random) -> None:
        kind = rng.choice(self.kinds)
        client = self.clients[protocol]
        try:
            if kind == "wrong_dtype":
                await client.infer("classify", [self._input(protocol, "RAW", np.zeros((1, 8), np.int32), "INT32")])
            elif kind == "wrong_shape":
                await client.infer("classify", [self._input(protocol, "RAW", np.zeros((9, 8, 2), np.uint8), "UINT8")])
            elif kind == "unknown_model":
                await client.infer("no_such_model", [self._input(protocol, "RAW", np.zeros((1, 8), np.uint8), "UINT8")])
            else:
                # out of range on gRPC (uint64), not a number on HTTP (JSON parameter)
                priority: Any = 10**6 if protocol == "grpc" else "high"
                features = np.zeros((1, 16), np.float32)
                await client.infer("classifier", [self._input(protocol, "FEATURES", features, "FP32")], priority=priority)
                # Triton clamps an out-of-range priority to the default: an answer is acceptable
                self.tally.invalid[f"{kind}: answered"] += 1
                return
        except Exception as exc:  # noqa: BLE001
            outcome = "client error" if _is_client_error(exc) else f"SERVER ERROR {getattr(exc, 'status', lambda: '')()!s}"
            self.tally.invalid[f"{kind}: {outcome}"] += 1
            return
        self.tally.invalid[f"{kind}: WRONGLY ACCEPTED"] += 1


def client_process(index: int, tasks: list[int], http: str, grpc: str, kinds: tuple[str, ...],
                   shared: Shared, results: Any) -> None:
    """One client process: ``tasks`` (their numbers) keep a request in flight each, until
    ``shared.stop``; then its tally goes to ``results``."""
    tally = Tally()

    async def run() -> None:
        traffic = Traffic(http, grpc, tally, kinds)
        stopping = asyncio.Event()

        async def task(number: int) -> None:
            rng = random.Random(number)
            protocol = "http" if number % 2 == 0 else "grpc"
            while not stopping.is_set():
                if not kinds or rng.random() < 0.8:
                    await traffic.valid(protocol, rng)
                else:
                    await traffic.invalid(protocol, rng)
                shared.lost[index] = tally.lost
                shared.finished(index)

        await asyncio.sleep(max(0.0, shared.traffic_start - time.monotonic()))
        running = [asyncio.ensure_future(task(n)) for n in tasks]
        while not shared.stop.is_set():
            await asyncio.sleep(0.005)
        stopping.set()  # no task starts a request after this; the ones in flight go on
        shared.stopped[index].set()
        await asyncio.wait(running, timeout=120)
        await traffic.close()

    asyncio.run(run())
    results.put((index, tally))


async def soak(args: argparse.Namespace) -> int:
    server = _serverproc.start(args.repository, "--model-control-mode", "explicit", "--load-model", "*",
                               *shlex.split(args.dagserve_args))
    kinds = tuple(k for k in args.invalid.split(",") if k)
    clients = max(1, min(args.clients, args.concurrency))
    windows = int(args.duration // args.window)
    mp = multiprocessing.get_context("spawn")
    shared = Shared(started=0.0, traffic_start=0.0, window=args.window, windows=windows, clients=clients,
                    done=mp.Array("q", clients * windows, lock=False), lost=mp.Array("q", clients, lock=False),
                    stop=mp.Event(), stopped=[mp.Event() for _ in range(clients)])
    results = mp.Queue()
    print(f"serving {args.repository.name} on http {server.http} grpc {server.grpc}; {args.duration:.0f} s at "
          f"c{args.concurrency} from {clients} client process(es)", flush=True)
    import tritonclient.http.aio as http_aio

    control = http_aio.InferenceServerClient(server.http)
    reloads_ok, reloads_failed = 0, []

    async def reloader() -> None:
        nonlocal reloads_ok
        while True:
            await asyncio.sleep(args.reload_every)
            if shared.stop.is_set():
                return
            try:
                await control.load_model("classifier")
                reloads_ok += 1
            except Exception as exc:  # noqa: BLE001
                reloads_failed.append(str(exc)[:160])

    server_cpu, client_cpu, other_cpu, steal_cpu = [], [], [], []

    def cpu_now() -> tuple[float, float, float, float]:
        served = _serverproc.tree_cpu_seconds(server.proc.pid)
        mine = _serverproc.tree_cpu_seconds(os.getpid()) - served
        busy, steal = _serverproc.machine_cpu_seconds()
        return served, mine, busy - served - mine, steal

    async def reporter() -> None:
        last = cpu_now()
        for w in range(windows):
            await asyncio.sleep(max(0.0, shared.started + (w + 1) * args.window - time.monotonic()))
            now = cpu_now()
            server_cpu.append((now[0] - last[0]) / args.window)
            client_cpu.append((now[1] - last[1]) / args.window)
            other_cpu.append(max(0.0, now[2] - last[2]) / args.window)
            steal_cpu.append((now[3] - last[3]) / args.window)
            last = now
            print(f"  window {w:3d}: {shared.done_in(w) / args.window:7.0f} req/s  server CPU {server_cpu[-1]:4.2f}  "
                  f"clients CPU {client_cpu[-1]:4.2f}  other processes {other_cpu[-1]:4.2f}  "
                  f"steal {steal_cpu[-1]:4.2f}  (lost so far {sum(shared.lost)})", flush=True)

    # Every client process starts at one instant; the windows count from the end of the warm-up.
    shared.traffic_start = time.monotonic() + 3.0 + clients
    shared.started = shared.traffic_start + args.warmup
    procs = [mp.Process(target=client_process, daemon=True,
                        args=(i, list(range(i, args.concurrency, clients)), server.http, server.grpc, kinds, shared, results))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    await asyncio.sleep(max(0.0, shared.started - time.monotonic()))
    side = [asyncio.ensure_future(reloader()), asyncio.ensure_future(reporter())]
    await asyncio.sleep(args.duration)

    # SIGTERM under load: no new request after it, the ones in flight must be answered.
    shared.stop.set()
    for event in shared.stopped:
        await asyncio.to_thread(event.wait, 60)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    tallies = [await asyncio.to_thread(results.get, True, 180) for _ in procs]
    for t in side:
        t.cancel()
    await asyncio.gather(*side, return_exceptions=True)
    try:
        code: int | str = await asyncio.to_thread(server.proc.wait, args.exit_timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        await asyncio.to_thread(server.proc.wait)
        code = f"none: still running {args.exit_timeout:.0f} s after SIGTERM, killed"
        print("server output (last 30 lines):\n  " + "\n  ".join(server.lines[-30:]))
    exit_s = time.monotonic() - signalled
    failed_http = [marks for _, part in tallies for marks in part.failed_http]
    await control.close()
    for proc in procs:
        proc.join(30)

    tally = Tally()
    for _, part in tallies:
        tally.valid_ok += part.valid_ok
        tally.lost += part.lost
        tally.lost_reasons.update(part.lost_reasons)
        tally.invalid.update(part.invalid)
    rates = [shared.done_in(w) / args.window for w in range(windows)]
    print(f"windows ({args.window:.0f} s, req/s): {' '.join(f'{r:.0f}' for r in rates)}")
    if rates and max(rates) > 0:
        print(f"worst/best window = {min(rates) / max(rates):.2f} (goal >= 0.80)")
    if server_cpu:
        print(f"server CPU (cores) per window: min {min(server_cpu):.2f}, max {max(server_cpu):.2f}; "
              f"clients: min {min(client_cpu):.2f}, max {max(client_cpu):.2f}; other processes: min "
              f"{min(other_cpu):.2f}, max {max(other_cpu):.2f}; steal: min {min(steal_cpu):.2f}, max {max(steal_cpu):.2f}")
        per_request = [cpu / rate * 1e6 for cpu, rate in zip(server_cpu, rates) if rate]
        print(f"server CPU per request (µs): min {min(per_request):.0f}, max {max(per_request):.0f}")
    print(f"valid answered correctly: {tally.valid_ok}")
    for outcome, n in sorted(tally.invalid.items()):
        print(f"invalid {outcome}: {n}")
    print(f"reloads: {reloads_ok} ok, {len(reloads_failed)} failed"
          + (f" (first: {reloads_failed[0]})" if reloads_failed else ""))
    for reason, n in tally.lost_reasons.most_common(5):
        print(f"  lost {n} x {reason}")
    for marks in failed_http[:20]:  # times in ms from SIGTERM: negative is before it
        print("  failed HTTP request: " + ", ".join(
            f"{k} {(v - signalled) * 1000:+.1f} ms" if isinstance(v, float) else f"{k}: {v}" for k, v in marks.items()))
    print(f"lost = {tally.lost}")
    print(f"exit code = {code}, exit took {exit_s:.1f} s after SIGTERM")
    if code != 0:
        print("the server's last lines:\n  " + "\n  ".join(list(server.lines)[-30:]))
    return 0 if tally.lost == 0 and code == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic before SIGTERM")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--clients", type=int, default=1,
                        help="client processes sharing the concurrency (one Python client tops out near one core)")
    parser.add_argument("--repository", type=Path, default=REPO,
                        help="a copy of bench/repos/triton_ensemble (e.g. with other execution parameters)")
    parser.add_argument("--reload-every", type=float, default=10.0, help="seconds between reloads of classifier")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per throughput window")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds of traffic before the first window (its requests count for lost, not for windows)")
    parser.add_argument("--dagserve-args", default="", help="extra `dagserve serve` flags, e.g. \"--workers 4\"")
    parser.add_argument("--exit-timeout", type=float, default=60.0, help="seconds to wait for the exit after SIGTERM")
    parser.add_argument("--invalid", default=",".join(INVALID_KINDS),
                        help=f"comma-separated kinds of invalid request to mix in (default: all of {', '.join(INVALID_KINDS)})")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
