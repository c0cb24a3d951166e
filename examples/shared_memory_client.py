"""The iris pipeline through system shared memory, with the stock tritonclient.

Start a server that allows client shared memory, then run this script on the same machine:

    dagserve serve --model-repository examples/pipelines --allow-client-shm
    python examples/shared_memory_client.py                    # HTTP on localhost:8000
    python examples/shared_memory_client.py --grpc localhost:8001

The two flowers go to the server in a shared-memory region instead of the request body, and
the labels and scores come back in another region: the response only describes them.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", default="localhost:8000", help="HTTP address (default localhost:8000)")
    parser.add_argument("--grpc", default=None, help="use gRPC at this address instead of HTTP")
    args = parser.parse_args()
    module = grpcclient if args.grpc else httpclient
    client = module.InferenceServerClient(args.grpc or args.http)

    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]], dtype=np.float32)
    key = f"/iris_{os.getpid()}"  # an object in /dev/shm, unique to this process
    inputs = shm.create_shared_memory_region("iris_in", key + "_in", flowers.nbytes)
    outputs = shm.create_shared_memory_region("iris_out", key + "_out", 256)
    try:
        shm.set_shared_memory_region(inputs, [flowers])
        client.register_system_shared_memory("iris_in", key + "_in", flowers.nbytes)
        client.register_system_shared_memory("iris_out", key + "_out", 256)

        features = module.InferInput("FEATURES", list(flowers.shape), "FP32")
        features.set_shared_memory("iris_in", flowers.nbytes)
        label, score = module.InferRequestedOutput("LABEL"), module.InferRequestedOutput("SCORE")
        label.set_shared_memory("iris_out", 128)  # BYTES: room for two length-prefixed labels
        score.set_shared_memory("iris_out", 8, offset=128)
        result = client.infer("iris", [features], outputs=[label, score])

        # The response describes each output (datatype, shape) and carries no data for it.
        assert result.get_output("LABEL") is not None
        labels = shm.get_contents_as_numpy(outputs, np.object_, [2, 1])
        scores = shm.get_contents_as_numpy(outputs, np.float32, [2, 1], offset=128)
        for flower, name, p in zip(flowers, labels.reshape(-1), scores.reshape(-1), strict=True):
            print(flower, name.decode(), round(float(p), 3))
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs)
        shm.destroy_shared_memory_region(outputs)


if __name__ == "__main__":
    main()
