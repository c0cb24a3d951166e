"""Decoupled: sends I = 0 .. N-1, but sends I = k+1 only once the file "ack<k>" exists in the
directory named by the "dir" parameter (the caller acknowledges each response); without an
acknowledgement within 10 s it sends an error response instead."""
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            folder = json.loads(request.parameters())["dir"]
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(n):
                if i:
                    deadline = time.monotonic() + 10
                    while not os.path.exists(os.path.join(folder, f"ack{i - 1}")):
                        if time.monotonic() > deadline:
                            error = pb_utils.TritonError(f"response {i - 1} was never acknowledged")
                            sender.send(pb_utils.InferenceResponse(error=error),
                                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                            return None
                        time.sleep(0.01)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
