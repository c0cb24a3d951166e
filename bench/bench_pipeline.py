"""Pipeline overhead, in process: the cost of one hop, and an ensemble vs the same YAML pipeline.

    python bench/bench_pipeline.py            # about 20 s

1. A chain of N identity steps (N = 1, 4, 16) served as one pipeline, called one request at a
   time through ``Server.infer``: the time per request, per hop, and what a hop costs beyond
   calling the identity model directly (the executor's own overhead).
2. preprocess -> classifier (dynamic batching) -> postprocess, tiny Triton-style Python models,
   as a Triton ensemble (config.pbtxt) and as a YAML pipeline, under 32 concurrent requests:
   throughput of each and their ratio.

The repository is generated in a temporary directory; nothing outside it is touched.
"""

from __future__ import annotations

import logging
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import numpy as np

from dagserve import InferRequest, Server, ServerOptions

CHAINS = (1, 4, 16)
SECONDS = 2.0  # per measurement
CONCURRENCY = 32

IDENTITY = """\
backend: python
parameters: {execution: inline}
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: X, datatype: FP32, shape: [-1]}]
"""

TRITON_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "{src}").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("{dst}", {expr})]))
        return out
"""

STAGES = {  # name: (input, output, expression, max_batch_size, dims in, dims out)
    "pre": ("RAW", "FEATURES", "(x[:16].astype(np.float32) / 255)", 0, "[ -1 ]", "[ 16 ]"),
    "clf": ("FEATURES", "LOGITS", "x[:, :4] * 2", 8, "[ 16 ]", "[ 4 ]"),
    "post": ("LOGITS", "SCORE", "x.max(keepdims=True)", 0, "[ 4 ]", "[ 1 ]"),
}
DTYPES = {"RAW": "TYPE_UINT8", "FEATURES": "TYPE_FP32", "LOGITS": "TYPE_FP32", "SCORE": "TYPE_FP32"}


def build_repository(root: Path) -> None:
    """Identity model, chain pipelines, three Triton-style stages, their ensemble and YAML."""
    (root / "identity" / "1").mkdir(parents=True)
    (root / "identity" / "config.yaml").write_text(IDENTITY)
    (root / "identity" / "1" / "model.py").write_text("def infer(inputs):\n    return inputs\n")
    for n in CHAINS:
        steps = "\n".join(
            f"    - {{name: s{i}, model: identity, inputs: {{X: {'X' if i == 0 else f's{i - 1}.X'}}}}}"
            for i in range(n)
        )
        (root / f"chain_{n}").mkdir()
        (root / f"chain_{n}" / "config.yaml").write_text(
            "backend: pipeline\n"
            + IDENTITY.split("\n", 2)[2]
            + f"pipeline:\n  steps:\n{steps}\n  outputs: {{X: s{n - 1}.X}}\n"
        )
    for name, (src, dst, expr, mbs, din, dout) in STAGES.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(TRITON_MODEL.format(src=src, dst=dst, expr=expr))
        batching = "dynamic_batching { }\n" if mbs else ""
        (root / name / "config.pbtxt").write_text(
            textwrap.dedent(f"""\
            backend: "python"
            max_batch_size: {mbs}
            input [ {{ name: "{src}" data_type: {DTYPES[src]} dims: {din} }} ]
            output [ {{ name: "{dst}" data_type: {DTYPES[dst]} dims: {dout} }} ]
            parameters {{ key: "execution" value: {{ string_value: "inline" }} }}
            """)
            + batching
        )
    (root / "ensemble").mkdir()
    (root / "ensemble" / "config.pbtxt").write_text(
        textwrap.dedent("""\
        platform: "ensemble"
        max_batch_size: 0
        input [ { name: "RAW" data_type: TYPE_UINT8 dims: [ -1 ] } ]
        output [ { name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] } ]
        ensemble_scheduling { step [
          { model_name: "pre" input_map { key: "RAW" value: "RAW" } output_map { key: "FEATURES" value: "f" } },
          { model_name: "clf" input_map { key: "FEATURES" value: "f" } output_map { key: "LOGITS" value: "l" } },
          { model_name: "post" input_map { key: "LOGITS" value: "l" } output_map { key: "SCORE" value: "SCORE" } }
        ] }
        """)
    )
    (root / "yaml").mkdir()
    (root / "yaml" / "config.yaml").write_text(
        textwrap.dedent("""\
        backend: pipeline
        inputs: [{name: RAW, datatype: UINT8, shape: [-1]}]
        outputs: [{name: SCORE, datatype: FP32, shape: [1]}]
        pipeline:
          steps:
            - {model: pre, inputs: {RAW: RAW}}
            - {model: clf, inputs: {FEATURES: pre.FEATURES}}
            - {model: post, inputs: {LOGITS: clf.LOGITS}}
          outputs: {SCORE: post.SCORE}
        """)
    )


async def sequential(call: Callable[[], Awaitable[object]], seconds: float = SECONDS) -> float:
    """Mean seconds per call, one call at a time, after a warm-up."""
    for _ in range(200):
        await call()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            await call()
        count += 100
    return elapsed / count


async def throughput(call: Callable[[], Awaitable[object]], seconds: float = SECONDS) -> float:
    """Calls per second with CONCURRENCY callers in a loop."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    for _ in range(100):
        await call()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(caller)
    return done / (time.perf_counter() - start)


async def main() -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_repository(root)
        async with Server(ServerOptions(model_repository=root)) as server:
            x = InferRequest(inputs={"X": np.zeros(8, dtype=np.float32)})
            direct = await sequential(lambda: server.infer("identity", "", x))
            print(f"direct call of the identity model: {direct * 1e6:7.1f} us")
            per_request = {}
            for n in CHAINS:
                per_request[n] = await sequential(lambda n=n: server.infer(f"chain_{n}", "", x))
                print(
                    f"chain of {n:2d} identity steps: {per_request[n] * 1e6:8.1f} us/request, "
                    f"{per_request[n] / n * 1e6:6.1f} us/step"
                )
            hop = (per_request[CHAINS[-1]] - per_request[CHAINS[0]]) / (CHAINS[-1] - CHAINS[0])
            print(
                f"per hop (slope 1 -> {CHAINS[-1]} steps): {hop * 1e6:.1f} us, "
                f"of which the pipeline executor: {(hop - direct) * 1e6:.1f} us "
                f"(the rest is the member's own call)"
            )
            fixed = per_request[CHAINS[0]] - hop
            print(f"fixed cost per pipeline request (validation, routing): {fixed * 1e6:.1f} us")

            raw = InferRequest(inputs={"RAW": np.arange(64, dtype=np.uint8)})
            ensemble = await throughput(lambda: server.infer("ensemble", "", raw))
            yaml_form = await throughput(lambda: server.infer("yaml", "", raw))
            print(
                f"3-step pipeline, {CONCURRENCY} concurrent requests: ensemble {ensemble:8.0f} req/s, "
                f"YAML {yaml_form:8.0f} req/s, YAML/ensemble = {yaml_form / ensemble:.2f}"
            )


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    anyio.run(main)
