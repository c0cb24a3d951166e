"""Triton's decoupled pattern: N responses (OUT = 0..N-1) sent from a thread, then the final flag."""
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            threading.Thread(target=self._answer, args=(request.get_response_sender(), n)).start()
        return None

    def _answer(self, sender, n):
        if n < 0:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("N must be >= 0")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        for i in range(n):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
