"""Decoupled: for N >= 0 sends I = 10, 11, ... (N responses), then an empty response with
only the final flag. N < 0 sends one error response (final); N == 99 raises after two ticks."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            if n < 0:
                error = pb_utils.TritonError(f"negative count {n}", pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            for i in range(n if n != 99 else 2):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([10 + i], np.int32))]))
            if n == 99:
                raise RuntimeError("ticker cannot count to 99")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        # A decoupled model answers through its senders; execute returns None (Triton's rule).
