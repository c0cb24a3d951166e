"""A bounded soak: sustained mixed traffic with reloads, ended by SIGTERM under load.

    python bench/soak.py [--duration 600] [--concurrency 16] [--reload-every 10] [--window 10]
        [--dagserve-args "--workers 4"]

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
exit code and exit time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
    started: float = field(default_factory=time.monotonic)
    window: float = 10.0
    done_per_window: collections.Counter[int] = field(default_factory=collections.Counter)
    valid_ok: int = 0
    lost: int = 0
    lost_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    invalid: collections.Counter[str] = field(default_factory=collections.Counter)
    reloads_ok: int = 0
    reloads_failed: list[str] = field(default_factory=list)

    def finished(self) -> None:
        self.done_per_window[int((time.monotonic() - self.started) // self.window)] += 1


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


async def soak(args: argparse.Namespace) -> int:
    server = _serverproc.start(args.repository, "--model-control-mode", "explicit", "--load-model", "*",
                               *shlex.split(args.dagserve_args))
    tally = Tally(window=args.window)
    kinds = tuple(k for k in args.invalid.split(",") if k)
    traffic = Traffic(server.http, server.grpc, tally, kinds)
    stopping = asyncio.Event()
    print(f"serving {args.repository.name} on http {server.http} grpc {server.grpc}; {args.duration:.0f} s at c{args.concurrency}",
          flush=True)

    async def worker(index: int) -> None:
        rng = random.Random(index)
        protocol = "http" if index % 2 == 0 else "grpc"
        while not stopping.is_set():
            if not kinds or rng.random() < 0.8:
                await traffic.valid(protocol, rng)
            else:
                await traffic.invalid(protocol, rng)
            tally.finished()

    async def reloader() -> None:
        while True:
            await asyncio.sleep(args.reload_every)
            if stopping.is_set():
                return
            try:
                await traffic.clients["http"].load_model("classifier")
                tally.reloads_ok += 1
            except Exception as exc:  # noqa: BLE001
                tally.reloads_failed.append(str(exc)[:160])

    async def reporter() -> None:
        shown = 0
        while not stopping.is_set():
            await asyncio.sleep(1)
            current = int((time.monotonic() - tally.started) // tally.window)
            for w in range(shown, current):
                print(f"  window {w:3d}: {tally.done_per_window[w] / tally.window:7.0f} req/s  "
                      f"(lost so far {tally.lost})", flush=True)
            shown = max(shown, current)

    tasks = [asyncio.ensure_future(worker(i)) for i in range(args.concurrency)]
    side = [asyncio.ensure_future(reloader()), asyncio.ensure_future(reporter())]
    await asyncio.sleep(args.duration)
    full_windows = int(args.duration // args.window)

    # SIGTERM under load: no new request after it, the ones in flight must be answered.
    signalled = time.monotonic()
    stopping.set()
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.wait(tasks, timeout=120)
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
    await traffic.close()

    rates = [tally.done_per_window[w] / tally.window for w in range(full_windows)]
    print(f"windows ({args.window:.0f} s, req/s): {' '.join(f'{r:.0f}' for r in rates)}")
    if rates and max(rates) > 0:
        print(f"worst/best window = {min(rates) / max(rates):.2f} (goal >= 0.80)")
    print(f"valid answered correctly: {tally.valid_ok}")
    for outcome, n in sorted(tally.invalid.items()):
        print(f"invalid {outcome}: {n}")
    print(f"reloads: {tally.reloads_ok} ok, {len(tally.reloads_failed)} failed"
          + (f" (first: {tally.reloads_failed[0]})" if tally.reloads_failed else ""))
    for reason, n in tally.lost_reasons.most_common(5):
        print(f"  lost {n} x {reason}")
    print(f"lost = {tally.lost}")
    print(f"exit code = {code}, exit took {exit_s:.1f} s after SIGTERM")
    return 0 if tally.lost == 0 and code == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic before SIGTERM")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repository", type=Path, default=REPO,
                        help="a copy of bench/repos/triton_ensemble (e.g. with other execution parameters)")
    parser.add_argument("--reload-every", type=float, default=10.0, help="seconds between reloads of classifier")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per throughput window")
    parser.add_argument("--dagserve-args", default="", help="extra `dagserve serve` flags, e.g. \"--workers 4\"")
    parser.add_argument("--exit-timeout", type=float, default=60.0, help="seconds to wait for the exit after SIGTERM")
    parser.add_argument("--invalid", default=",".join(INVALID_KINDS),
                        help=f"comma-separated kinds of invalid request to mix in (default: all of {', '.join(INVALID_KINDS)})")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
