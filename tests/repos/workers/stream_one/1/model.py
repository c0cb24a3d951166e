"""A decoupled model served by one worker (placement one): N responses (OUT = 0..N-1, PID = the
answering process), then the final flag; N < 0 fails after the responses for |N|."""
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            for i in range(abs(n)):
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", np.array([i], np.int32)),
                    pb_utils.Tensor("PID", np.array([os.getpid()], np.int64)),
                ]))
            if n < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"failed after {-n} responses")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
