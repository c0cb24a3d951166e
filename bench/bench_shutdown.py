"""How fast `dagserve serve` stops, and what a SIGTERM under load costs.

Serves ``bench/repos/shutdown`` (a pipeline whose first step sleeps as long as each request
asks) in a subprocess and measures:

* idle: seconds from SIGTERM to exit of a server with no traffic (several runs);
* under load: 16 HTTP and 16 gRPC clients (tritonclient, one thread each) send pipeline
  requests back to back, each taking ``--request-ms``; after ``--seconds`` the server gets
  SIGTERM. The clients go on until the server refuses them. Printed: requests answered,
  requests lost (sent before the signal and not answered correctly), requests refused
  after the signal (expected), the exit status, the seconds from the signal to the exit, and
  the seconds from the end of the last request to the exit (the shutdown's own cost).

Bounded: about ``2 * seconds + 10`` s. Run: python bench/bench_shutdown.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent / "repos" / "shutdown"
CLIENTS = 16  # per protocol


def start() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "-1", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )
    found: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
        if len(found) == 2:
            return proc, found
    raise SystemExit(f"the server exited before listening (status {proc.wait()})")


def idle_exit_seconds() -> float:
    proc, _ = start()
    signalled = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    return time.perf_counter() - signalled


@dataclass
class Call:
    sent: float
    ended: float
    ok: bool


def client_loop(kind: str, url: str, request_ms: float, stop: threading.Event, calls: list[Call]) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(url)
    x = np.array([request_ms, 1.0], dtype=np.float32)
    expected = (x + 1) * 2
    failures = 0
    while not stop.is_set() and failures < 3:  # after the signal: refused, then give up
        inp = module.InferInput("X", [2], "FP32")
        inp.set_data_from_numpy(x)
        sent = time.perf_counter()
        try:
            y = client.infer("slow_pipeline", [inp]).as_numpy("Y")
            ok = bool(np.array_equal(y, expected))
        except Exception:  # noqa: BLE001 - counted
            ok = False
            failures += 1
        calls.append(Call(sent, time.perf_counter(), ok))
    try:
        client.close()
    except Exception:  # noqa: BLE001, S110
        pass


def under_load(seconds: float, request_ms: float) -> dict[str, float]:
    proc, addresses = start()
    stop = threading.Event()
    calls: list[Call] = []
    threads = [
        threading.Thread(target=client_loop, args=(kind, addresses["HTTP" if kind == "http" else "gRPC"],
                                                   request_ms, stop, calls))
        for kind in ("http", "grpc") for _ in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    signalled = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    exited = time.perf_counter()
    stop.set()
    for thread in threads:
        thread.join(60)
    before = [c for c in calls if c.sent < signalled]
    answered_before = [c for c in before if c.ok]
    last_end = max((c.ended for c in answered_before), default=signalled)
    return {
        "answered": len([c for c in calls if c.ok]),
        "lost": len(before) - len(answered_before),
        "in flight at the signal": len([c for c in before if c.ended > signalled]),
        "refused after the signal": len([c for c in calls if c.sent >= signalled and not c.ok]),
        "exit status": float(proc.returncode),
        "signal to exit, s": exited - signalled,
        "last request to exit, s": exited - last_end,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="load before the signal (default 3)")
    parser.add_argument("--request-ms", type=float, default=500.0, help="each request's slow step (default 500)")
    parser.add_argument("--idle-runs", type=int, default=3)
    args = parser.parse_args()

    idle = [idle_exit_seconds() for _ in range(args.idle_runs)]
    print(f"idle exit: median {statistics.median(idle):.3f}s, max {max(idle):.3f}s over {len(idle)} runs")
    result = under_load(args.seconds, args.request_ms)
    print(f"under c{CLIENTS} HTTP + c{CLIENTS} gRPC load, {args.request_ms:g} ms pipeline requests, "
          f"SIGTERM after {args.seconds:g}s:")
    for name, value in result.items():
        print(f"  {name}: {value:.3f}" if name.endswith(", s") else f"  {name}: {value:g}")


if __name__ == "__main__":
    main()
