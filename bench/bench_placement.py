"""What a model's ``placement`` does with ``--workers N``: throughput and batch size.

Serves ``bench/repos/triton_ensemble`` (three Python steps; ``classifier`` is dynamically
batched, max_batch_size 8) with ``dagserve serve --workers N --python-execution inline`` twice,
one server at a time: once with ``classifier`` placed ``replicate`` (every worker has its own,
the default), once placed ``one`` (worker 0 has it; the others forward its requests). Drives
each with the C++ ``perf_analyzer`` at one concurrency and prints req/s, p50, and the
classifier's mean batch size (inferences / executions, from the statistics), side by side.

Run: python bench/bench_placement.py [--workers 2] [--concurrency 64] [--protocol http]
     [--perf-analyzer PATH] [--window-ms 3000]
perf_analyzer: ``--perf-analyzer``, else ``$PERF_ANALYZER``, else the Triton reference venv's
(/tmp/triton-venv/bin/perf_analyzer; ``../shared/triton-reference/setup.sh`` makes it), else the
one ``compare.sh`` unpacks on the GPU machine (/tmp/dagserve-compare/pa/perf_analyzer/bin/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "bench" / "repos" / "triton_ensemble"
HTTP = 8750
CANDIDATES = ("/tmp/triton-venv/bin/perf_analyzer", "/tmp/dagserve-compare/pa/perf_analyzer/bin/perf_analyzer")


def perf_analyzer(given: str | None) -> str:
    for path in (given, os.environ.get("PERF_ANALYZER"), *CANDIDATES):
        if path and Path(path).is_file():
            return path
    sys.exit("no perf_analyzer: pass --perf-analyzer, set PERF_ANALYZER, or run ../shared/triton-reference/setup.sh "
             "/tmp/triton-venv")


def repository(placement: str, into: Path) -> Path:
    repo = into / f"repo_{placement}"
    shutil.copytree(REPO, repo)
    config = repo / "classifier" / "config.pbtxt"
    config.write_text(config.read_text() + f'parameters {{ key: "placement" value {{ string_value: "{placement}" }} }}\n')
    return repo


def get(path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{HTTP}{path}", timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"{}")


def measure(repo: Path, args: argparse.Namespace, pa: str) -> tuple[float, float, float]:
    server = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--http-port", str(HTTP),
         "--grpc-port", str(HTTP + 1), "--metrics-port", str(HTTP + 2), "--workers", str(args.workers),
         "--python-execution", "inline", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"},
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "HTTP service listening" in line:
                break
        else:
            sys.exit(f"dagserve did not start (exit {server.wait()})")
        port = HTTP if args.protocol == "http" else HTTP + 1
        done = subprocess.run(
            [pa, "-m", "classify", "-u", f"127.0.0.1:{port}", "-i", args.protocol, "--shape", "RAW:32",
             "--concurrency-range", str(args.concurrency), "--measurement-mode", "time_windows",
             "-p", str(args.window_ms), "--max-trials", "4", "--stability-percentage", "100"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        rate = re.search(r"Throughput: ([\d.]+) infer/sec", done.stdout)
        p50 = re.search(r"p50 latency: (\d+) usec", done.stdout)
        if rate is None or p50 is None:
            sys.exit(f"perf_analyzer gave no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        stats = get("/v2/models/classifier/stats")["model_stats"][0]
        batch = stats["inference_count"] / max(1, stats["execution_count"])
        return float(rate.group(1)), int(p50.group(1)) / 1000, batch
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--perf-analyzer")
    parser.add_argument("--window-ms", type=int, default=3000)
    args = parser.parse_args()
    pa = perf_analyzer(args.perf_analyzer)
    print(f"classify over {args.protocol} c{args.concurrency}, dagserve --workers {args.workers} "
          "--python-execution inline; classifier placed:")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for placement in ("replicate", "one"):
            results[placement] = measure(repository(placement, Path(tmp)), args, pa)
            rate, p50, batch = results[placement]
            print(f"  {placement:9s}  {rate:9.1f} req/s  p50 {p50:7.2f} ms  classifier mean batch {batch:5.2f}", flush=True)
            time.sleep(1)
    ratio = results["one"][0] / results["replicate"][0]
    print(f"one / replicate throughput: x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
