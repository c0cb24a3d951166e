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

``--dagserve-args`` serves dagserve a second time with those flags after its default run, and
prints its ratios too (e.g. ``--python-execution inline``: the operator's opt-in for short steps).
``--tree`` also serves another checkout of dagserve (its code first on PYTHONPATH, same
interpreter), for a before/after comparison of a change. ``--rounds N`` repeats the whole
sequence of servers N times, interleaved, so that load from elsewhere on a shared machine falls
on every server alike; each figure printed at the end is the median of its rounds.

Needs the Triton reference venv (``../shared/triton-reference/setup.sh VENV``); pass it with
``--triton-venv`` (default /tmp/triton-venv; it is set up there when missing).

Run: python bench/bench_vs_triton.py [--seconds 3] [--protocols http,grpc] [--concurrency 1,16]
        [--repository PATH --model NAME[,NAME...] --shape RAW:32] [--rounds N] [--port 8700]
        [--dagserve-args "--python-execution inline"] [--tree OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "bench" / "repos" / "triton_ensemble"
# The reference kit beside the checkout (../shared); TRITON_REFERENCE names it for a checkout elsewhere.
REFERENCE = Path(os.environ.get("TRITON_REFERENCE", ROOT.parent / "shared" / "triton-reference"))
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


def perf(venv: Path, model: str, shape: str, protocol: str, concurrency: int, seconds: float) -> tuple[float, float] | None:
    """(throughput infer/s, p50 latency µs) from perf_analyzer; None (and its output printed)
    when it gives no figures."""
    port = HTTP if protocol == "http" else GRPC
    # perf_analyzer now and then finds no 3 stable windows on a loaded machine: once more, with more windows.
    for max_trials in (3, 6):
        result = _perf_once(venv, model, shape, protocol, port, concurrency, seconds, max_trials)
        if isinstance(result, tuple):
            return result
    print("perf_analyzer gave no result:\n" + result[-1000:], file=sys.stderr, flush=True)
    return None


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
    # Run from the served tree, so that ``python -m dagserve.cli`` imports that tree's code.
    cwd = env.get("PYTHONPATH") or None
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        wait_ready(proc)
        for model in args.model.split(","):
            for protocol in args.protocols.split(","):
                for c in (int(c) for c in args.concurrency.split(",")):
                    result = perf(venv, model, args.shape, protocol, c, args.seconds)
                    if result is None:
                        print(f"{name:9s} {model:18s} {protocol:4s} c={c:<2d} no stable figures", flush=True)
                        continue
                    rate, p50 = results[(model, protocol, c)] = result
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
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of the whole sequence")
    parser.add_argument("--port", type=int, default=HTTP, help="HTTP port of every server (gRPC +1, metrics +2)")
    parser.add_argument("--dagserve-args", default="", help="extra flags for a second dagserve run")
    parser.add_argument("--tree", type=Path, action="append", default=[],
                        help="another dagserve checkout to serve too (repeatable)")
    parser.add_argument("--triton-venv", type=Path, default=Path(os.environ.get("TRITON_VENV", "/tmp/triton-venv")))
    args = parser.parse_args()
    HTTP, GRPC, METRICS = args.port, args.port + 1, args.port + 2
    venv = args.triton_venv
    if not (venv / "bin" / "perf_analyzer").exists():
        subprocess.run(["bash", str(REFERENCE / "setup.sh"), str(venv)], check=True)

    repo = str(args.repository.resolve())
    triton_command = ["bash", str(REFERENCE / "run_triton.sh"), str(venv), repo, str(HTTP), str(GRPC), str(METRICS)]
    serve = [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", repo, "--http-port", str(HTTP),
             "--grpc-port", str(GRPC), "--metrics-port", str(METRICS), "--log-level", "warning"]
    servers: list[tuple[str, list[str], dict[str, str]]] = [
        ("triton", triton_command, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    ]
    for tree in [ROOT, *args.tree]:
        env = dict(os.environ) | {"PYTHONPATH": str(tree.resolve())}
        label = "dagserve" if tree == ROOT else f"dagserve@{tree}"
        servers.append((label, serve, env))
        if args.dagserve_args:
            servers.append((f"{label} {args.dagserve_args}", serve + shlex.split(args.dagserve_args), env))
    rounds: dict[str, list[dict[Key, tuple[float, float]]]] = {name: [] for name, _, _ in servers}
    for r in range(args.rounds):
        for name, command, env in servers:
            if args.rounds > 1:
                print(f"-- round {r + 1}: {name}", flush=True)
            rounds[name].append(measure(name[:9], command, env, venv, args))
    keys = [(m, p, int(c)) for m in args.model.split(",") for p in args.protocols.split(",")
            for c in args.concurrency.split(",")]
    runs = {
        name: {key: (statistics.median(run[key][0] for run in results if key in run),
                     statistics.median(run[key][1] for run in results if key in run))
               for key in keys if any(key in run for run in results)}
        for name, results in rounds.items()
    }
    triton = runs.pop("triton")
    for name, dagserve in runs.items():
        print(f"\nratios ({name} vs Triton, same run, same client{'; medians' if args.rounds > 1 else ''}):")
        for key in triton:
            if key not in dagserve:
                continue
            (t_rate, t_p50), (d_rate, d_p50) = triton[key], dagserve[key]
            print(f"  {key[0]:18s} {key[1]:4s} c={key[2]:<2d} {d_rate:8.0f} infer/s (Triton {t_rate:.0f})  "
                  f"throughput x{d_rate / t_rate:.2f}   p50 latency x{d_p50 / t_p50:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
