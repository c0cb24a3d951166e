"""How flat is sustained throughput: dagserve vs real Triton, same client, same machine, same run.

Serves ``bench/repos/triton_ensemble`` from Triton 2.51 and from dagserve, one at a time, in
interleaved rounds (so that load from elsewhere on a shared machine falls on both alike), and
drives each with the C++ ``perf_analyzer`` at one concurrency for ``--windows`` windows of
``--window`` seconds. Prints every window's throughput, and per server worst/best window (the
soak's flatness figure, issue 10's goal ≥ 0.8) and the mean. When Triton swings as much as
dagserve here, the swing is the machine's; ``bench/soak.py`` judges dagserve alone, with
reloads, invalid requests and a final SIGTERM.

Needs the Triton reference venv (``../shared/triton-reference/setup.sh VENV``; default
/tmp/triton-venv, set up there when missing).

Run: python bench/bench_flatness.py [--windows 15] [--window 10] [--rounds 2]
        [--protocol http] [--concurrency 16] [--dagserve-args "--workers 2"]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import bench_vs_triton as vs


def windows(venv: Path, protocol: str, concurrency: int, count: int, seconds: float) -> list[float]:
    """Throughput of each of ``count`` perf_analyzer windows (a stability goal it never meets
    makes it run every window; ``-v`` prints each)."""
    port = vs.HTTP if protocol == "http" else vs.GRPC
    out = subprocess.run(
        [str(venv / "bin" / "perf_analyzer"), "-m", vs.MODEL, "-u", f"127.0.0.1:{port}", "-i", protocol,
         "--shape", vs.SHAPE, "--concurrency-range", str(concurrency), "--measurement-mode", "time_windows",
         "-p", str(int(seconds * 1000)), "--stability-percentage", "0.001", "--max-trials", str(count), "-v"],
        check=False, capture_output=True, text=True, timeout=count * seconds * 3 + 120,
    ).stdout
    rates = [float(r) for r in re.findall(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec", out)]
    if len(rates) < count:
        print(f"perf_analyzer gave {len(rates)} of {count} windows:\n{out[-1000:]}", file=sys.stderr, flush=True)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=15, help="windows per server and round")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (Triton, dagserve, Triton, ...)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dagserve-args", default="", help="extra `dagserve serve` flags")
    parser.add_argument("--triton-venv", type=Path, default=Path(os.environ.get("TRITON_VENV", "/tmp/triton-venv")))
    args = parser.parse_args()
    venv = args.triton_venv
    if not (venv / "bin" / "perf_analyzer").exists():
        subprocess.run(["bash", str(vs.REFERENCE / "setup.sh"), str(venv)], check=True)

    repo = str(vs.REPO)
    ports = [str(vs.HTTP), str(vs.GRPC), str(vs.METRICS)]
    servers = {
        "triton": (["bash", str(vs.REFERENCE / "run_triton.sh"), str(venv), repo, *ports],
                   {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}),
        "dagserve": ([sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", repo,
                      "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2],
                      "--log-level", "warning", *shlex.split(args.dagserve_args)],
                     dict(os.environ) | {"PYTHONPATH": os.pathsep.join(
                         [str(vs.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}),
    }
    rates: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(args.rounds):
        for name, (command, env) in servers.items():
            proc = subprocess.Popen(command, env=env, cwd=vs.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                vs.wait_ready(proc)
                got = windows(venv, args.protocol, args.concurrency, args.windows, args.window)
            finally:
                vs.stop(proc)
            rates[name] += got
            print(f"round {r + 1} {name:8s} {args.protocol} c{args.concurrency}: "
                  f"{' '.join(f'{x:.0f}' for x in got)} infer/s", flush=True)
    print(f"\n{args.window:g}-s windows, {args.rounds} interleaved rounds of {args.windows}:")
    for name, got in rates.items():
        if got:
            print(f"  {name:8s} worst/best {min(got) / max(got):.2f}   mean {sum(got) / len(got):7.0f} infer/s   "
                  f"range {min(got):.0f}-{max(got):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
