"""dagserve vs real Triton on the same Triton repository, measured by Triton's perf_analyzer.

Serves ``bench/repos/triton_ensemble`` (a Triton ensemble of three small Python-backend steps)
first from Triton 2.51, then from dagserve, one server at a time on this machine, and drives
each with the same C++ ``perf_analyzer`` at concurrency 1 and 16 over HTTP and gRPC. Prints
throughput and p50 latency for both and the ratios (dagserve / Triton throughput, Triton /
dagserve latency) measured in this one run.

``--repository`` and ``--model`` measure another Triton repository; several models
(comma-separated) are each measured in turn on the same server, e.g. the same chain written as
BLS (``--shape`` defaults to ``RAW:32``, the input of every model of both bench repositories)::

    python bench/bench_vs_triton.py --repository bench/repos/triton_bls \
        --model classify_bls,classify_bls_async --protocols http --rounds 3

``--rounds N`` repeats the whole Triton-then-dagserve sequence N times, so that on a shared,
noisy machine both servers meet the same noise, and prints each round's ratios.

Needs the Triton reference venv (``../shared/triton-reference/setup.sh VENV``); pass it with
``--triton-venv`` (default /tmp/triton-venv; it is set up there when missing).

Run: python bench/bench_vs_triton.py [--seconds 3] [--protocols http,grpc] [--concurrency 1,16]
        [--repository PATH --model NAME[,NAME...] --shape RAW:32] [--rounds 1]
        [--dagserve-args "--python-execution inline"]

``--dagserve-args`` serves dagserve a second time with those flags after its default run, and
prints its ratios too (e.g. ``--python-execution inline``: the operator's opt-in for short steps).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "bench" / "repos" / "triton_ensemble"
REFERENCE = ROOT.parent / "shared" / "triton-reference"
MODEL, SHAPE = "classify", "RAW:32"
# A result is keyed by (model, protocol, concurrency) and holds (throughput infer/s, p50 µs).
Key = tuple[str, str, int]
HTTP, GRPC, METRICS = 8700, 8701, 8702


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{HTTP}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def perf(venv: Path, model: str, shape: str, protocol: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """(throughput infer/s, p50 latency µs) from perf_analyzer; NaNs (and its output printed)
    when it gives no figures."""
    port = HTTP if protocol == "http" else GRPC
    # perf_analyzer now and then finds no 3 stable windows on a loaded machine: once more, with more windows.
    for max_trials in (3, 6):
        result = _perf_once(venv, model, shape, protocol, port, concurrency, seconds, max_trials)
        if isinstance(result, tuple):
            return result
    print("perf_analyzer gave no result:\n" + result[-1000:], file=sys.stderr, flush=True)
    return math.nan, math.nan


def _perf_once(
    venv: Path, model: str, shape: str, protocol: str, port: int, concurrency: int, seconds: float, max_trials: int
) -> tuple[float, float] | str:
    out = subprocess.run(
        [str(venv / "bin" / "perf_analyzer"), "-m", model, "-u", f"127.0.0.1:{port}", "-i", protocol,
         "--shape", shape, "--concurrency-range", str(concurrency), "--measurement-mode", "time_windows",
         "-p", str(int(seconds * 1000)), "--stability-percentage", "100", "--max-trials", str(max_trials)],
        check=False, capture_output=True, text=True, timeout=300,
    ).stdout
    rate = re.search(r"Throughput: ([\d.]+) infer/sec", out)
    p50 = re.search(r"p50 latency: (\d+) usec", out)
    if not rate or not p50:
        return out
    return float(rate.group(1)), float(p50.group(1))


def measure(
    name: str, command: list[str], env: dict[str, str], venv: Path, args: argparse.Namespace
) -> dict[Key, tuple[float, float]]:
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        wait_ready(proc)
        for model in args.model.split(","):
            for protocol in args.protocols.split(","):
                for c in (int(c) for c in args.concurrency.split(",")):
                    rate, p50 = results[(model, protocol, c)] = perf(venv, model, args.shape, protocol, c, args.seconds)
                    print(f"{name:9s} {model:18s} {protocol:4s} c={c:<2d} {rate:8.0f} infer/s  p50 {p50 / 1000:6.3f} ms",
                          flush=True)
    finally:
        stop(proc)
    return results


def main() -> int:
    global HTTP, GRPC, METRICS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="perf_analyzer measurement window")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", default="1,16", help="perf_analyzer concurrencies, comma-separated")
    parser.add_argument("--repository", type=Path, default=REPO, help="a Triton model repository")
    parser.add_argument("--model", default=MODEL, help="the model(s) to drive, comma-separated")
    parser.add_argument("--shape", default=SHAPE, help="perf_analyzer --shape for the models' input")
    parser.add_argument("--rounds", type=int, default=1, help="repeat Triton then dagserve this many times")
    parser.add_argument("--port", type=int, default=HTTP, help="HTTP port of both servers (gRPC +1, metrics +2)")
    parser.add_argument("--dagserve-args", default="", help="extra flags for a second dagserve run")
    parser.add_argument("--triton-venv", type=Path, default=Path(os.environ.get("TRITON_VENV", "/tmp/triton-venv")))
    args = parser.parse_args()
    HTTP, GRPC, METRICS = args.port, args.port + 1, args.port + 2
    venv = args.triton_venv
    if not (venv / "bin" / "perf_analyzer").exists():
        subprocess.run(["bash", str(REFERENCE / "setup.sh"), str(venv)], check=True)

    repo = str(args.repository.resolve())
    serve = [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", repo, "--http-port", str(HTTP),
             "--grpc-port", str(GRPC), "--metrics-port", str(METRICS), "--log-level", "warning"]
    for round_ in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\nround {round_} of {args.rounds}", flush=True)
        triton = measure(
            "triton",
            ["bash", str(REFERENCE / "run_triton.sh"), str(venv), repo, str(HTTP), str(GRPC), str(METRICS)],
            dict(os.environ), venv, args,
        )
        runs = {"dagserve": measure("dagserve", serve, dict(os.environ), venv, args)}
        if args.dagserve_args:
            runs[f"dagserve {args.dagserve_args}"] = measure("dagserve+", serve + shlex.split(args.dagserve_args),
                                                             dict(os.environ), venv, args)
        for name, dagserve in runs.items():
            print(f"\nratios ({name} vs Triton, same run, same client):")
            for key in triton:
                (t_rate, t_p50), (d_rate, d_p50) = triton[key], dagserve[key]
                print(f"  {key[0]:18s} {key[1]:4s} c={key[2]:<2d} throughput x{d_rate / t_rate:.2f}"
                      f"   p50 latency x{d_p50 / t_p50:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
