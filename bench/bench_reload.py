"""Requests lost while models are reloaded under load, as an operator deploys.

Starts ``dagserve serve --model-control-mode explicit`` (a subprocess, loopback ports) on a copy
of examples/pipelines with iris loaded, drives it with ``--concurrency`` tritonclient workers
(half HTTP, half gRPC; each sends the iris request in a loop), and meanwhile reloads a model
``--reloads`` times: its file is touched, then the load API is called (alternating HTTP and
gRPC). Prints the requests answered, the requests failed (each distinct error once), and the
time each reload took. Before zero-loss reload (unload, then load) each reload here failed
about 80 requests.

Run: python bench/bench_reload.py [--reloads 20] [--concurrency 16] [--model iris_logreg]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "pipelines"
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]], dtype=np.float32)


def start_server(repo: Path) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repo), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "-1", "--model-control-mode", "explicit", "--load-model", "iris",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    found: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"(HTTP|gRPC) service listening on (?:http://)?(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
        if len(found) == 2:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, found["HTTP"], found["gRPC"]
    raise SystemExit(f"server exited before reporting its ports (code {proc.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", default="iris_logreg", help="the model to reload (iris calls it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(EXAMPLES, repo)
        proc, http_url, grpc_url = start_server(repo)
        stop = threading.Event()
        answered = [0] * args.concurrency
        errors: Counter[str] = Counter()

        def worker(i: int) -> None:
            use_http = i % 2 == 0
            client = httpclient.InferenceServerClient(http_url) if use_http else grpcclient.InferenceServerClient(grpc_url)
            module = httpclient if use_http else grpcclient
            features = module.InferInput("FEATURES", list(FLOWERS.shape), "FP32")
            features.set_data_from_numpy(FLOWERS)
            while not stop.is_set():
                try:
                    client.infer("iris", [features])
                    answered[i] += 1
                except Exception as exc:  # noqa: BLE001 - counting failures is the point
                    errors[f"{'http' if use_http else 'grpc'}: {str(exc)[:120]}"] += 1
            client.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        took: list[float] = []
        try:
            time.sleep(1.0)  # warm-up: let every worker send (a benchmark, not a test)
            model_file = next((repo / args.model).glob("*/model.py"))
            with httpclient.InferenceServerClient(http_url, network_timeout=300) as h, \
                    grpcclient.InferenceServerClient(grpc_url) as g:
                for n in range(args.reloads):
                    stat = model_file.stat()
                    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
                    began = time.perf_counter()
                    (h if n % 2 == 0 else g).load_model(args.model)
                    took.append(time.perf_counter() - began)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

    lost = sum(errors.values())
    print(f"reloads: {args.reloads} of '{args.model}' at concurrency {args.concurrency} "
          f"(HTTP and gRPC), each {np.median(took) * 1e3:.0f} ms median, {max(took) * 1e3:.0f} ms max")
    print(f"requests answered: {sum(answered)}")
    print(f"lost = {lost}")
    for message, count in errors.most_common(5):
        print(f"  {count} x {message}")


if __name__ == "__main__":
    main()
