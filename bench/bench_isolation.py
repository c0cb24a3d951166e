"""What each ``execution`` mode of a Python model costs per call: inline, thread, async, process.

Writes one tiny model (a Triton-form identity over a 16-float tensor) four times into a temporary
repository, one per mode, serves it in this process with ``Server`` and calls each one back to
back (concurrency 1, so the figure is the latency each mode adds) and with 16 concurrent callers.
Prints microseconds per call and requests/s, and each mode's extra cost over ``inline``.

Run: python bench/bench_isolation.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
from bench_frontends import closed_loop  # the same closed-loop load as the frontends bench

MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''

ASYNC_MODEL = MODEL.replace("    def execute", "    async def execute")

MODES = ("inline", "thread", "async", "process")


def write_repo(root: Path) -> None:
    for mode in MODES:
        (root / mode / "1").mkdir(parents=True)
        (root / mode / "1" / "model.py").write_text(ASYNC_MODEL if mode == "async" else MODEL)
        execution = "inline" if mode == "async" else mode  # async def always runs on the loop
        (root / mode / "config.yaml").write_text(
            f"backend: python\nparameters: {{execution: {execution}}}\n"
            "inputs: [{name: X, datatype: FP32, shape: [16]}]\n"
            "outputs: [{name: Y, datatype: FP32, shape: [16]}]\n"
        )


async def main(seconds: float) -> None:
    from dagserve import InferRequest, Server

    x = np.arange(16, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp))
        async with Server(model_repository=Path(tmp)) as server:
            results: dict[str, tuple[float, float]] = {}
            for mode in MODES:
                async def call(mode: str = mode) -> None:
                    await server.infer(mode, "", InferRequest(inputs={"X": x}))

                c1 = await closed_loop(call, 1, seconds)
                c16 = await closed_loop(call, 16, seconds)
                results[mode] = (c1, c16)
    base = 1e6 / results["inline"][0]
    print(f"{'mode':8} {'us/call c1':>11} {'+ vs inline':>12} {'req/s c1':>10} {'req/s c16':>10}")
    for mode, (c1, c16) in results.items():
        us = 1e6 / c1
        print(f"{mode:8} {us:11.1f} {us - base:12.1f} {c1:10.0f} {c16:10.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args().seconds))
