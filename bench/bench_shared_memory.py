"""What system shared memory saves on large tensors: one request of an identity-like model
(``Y = X + 1``, FP32) sent in the body against sent through shared-memory regions.

    python bench/bench_shared_memory.py [--mib 1 16 64] [--repeat 20]

The server runs in this process (``dagserve.testing.serve_in_thread``, ``--allow-client-shm``);
the client is the stock tritonclient with ``tritonclient.utils.shared_memory``. For each tensor
size and protocol it prints the median wall time of one request: the input and the output in
the request/response (HTTP binary tensor data, gRPC raw contents), then both in regions
registered once beforehand (the client writes the input into its region and reads the output
from it; those copies are inside the timing).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from dagserve.engine import Server
from dagserve.testing import serve_in_thread


async def _setup(server: Server) -> None:
    await server.add_model("plus_one", lambda inputs: {"Y": inputs["X"] + 1}, {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1]}],
    })


def _median_ms(call: Any, repeat: int) -> float:
    call()  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _measure(client: Any, module: Any, x: np.ndarray, handles: list[Any], repeat: int) -> tuple[float, float]:
    """Median ms of one request with the tensors in the body, then in regions ``in``/``out``."""
    count = x.size

    def in_body() -> None:
        tensor = module.InferInput("X", [count], "FP32")
        tensor.set_data_from_numpy(x)
        y = client.infer("plus_one", [tensor]).as_numpy("Y")
        assert y is not None and y.shape == x.shape

    def in_shm() -> None:
        shm.set_shared_memory_region(handles[0], [x])
        tensor = module.InferInput("X", [count], "FP32")
        tensor.set_shared_memory("in", x.nbytes)
        out = module.InferRequestedOutput("Y")
        out.set_shared_memory("out", x.nbytes)
        client.infer("plus_one", [tensor], outputs=[out])
        y = shm.get_contents_as_numpy(handles[1], np.float32, [count])
        assert y[0] == x[0] + 1

    return _median_ms(in_body, repeat), _median_ms(in_shm, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, nargs="+", default=[1, 16, 64], help="tensor sizes in MiB")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with serve_in_thread(metrics=False, setup=_setup, allow_client_shm=True,
                         http_max_body_size=1 << 30) as running:
        print(f"{'MiB':>5} {'protocol':>8} {'in body ms':>11} {'shm ms':>8} {'ratio':>6}")
        for mib in args.mib:
            count = mib * (1 << 20) // 4
            x = np.random.default_rng(0).random(count, dtype=np.float32)
            key = f"/dagserve_bench_{uuid.uuid4().hex[:8]}"
            handles = [shm.create_shared_memory_region(n, f"{key}_{n}", x.nbytes) for n in ("in", "out")]
            try:
                for name, module, url in (("http", httpclient, running.http_url),
                                          ("grpc", grpcclient, running.grpc_url)):
                    client = module.InferenceServerClient(url)
                    client.register_system_shared_memory("in", f"{key}_in", x.nbytes)
                    client.register_system_shared_memory("out", f"{key}_out", x.nbytes)

                    body_ms, shm_ms = _measure(client, module, x, handles, args.repeat)
                    print(f"{mib:>5} {name:>8} {body_ms:>11.2f} {shm_ms:>8.2f} {body_ms / shm_ms:>6.1f}")
                    client.unregister_system_shared_memory()
            finally:
                for handle in handles:
                    shm.destroy_shared_memory_region(handle)


if __name__ == "__main__":
    main()
