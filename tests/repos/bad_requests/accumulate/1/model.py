"""A stateful running sum: TOTAL = previous TOTAL (implicit state) + X.

FLAGS echoes the START and END controls, CORR the correlation id, BATCH how many requests
shared this execute call."""
import numpy as np
import triton_python_backend_utils as pb_utils


def value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            total = value(request, "TOTAL_IN") + value(request, "X")
            flags = np.concatenate([value(request, "START"), value(request, "END")], axis=1)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TOTAL", total.astype(np.int32)),
                pb_utils.Tensor("TOTAL_OUT", total.astype(np.int32)),
                pb_utils.Tensor("FLAGS", flags.astype(np.int32)),
                pb_utils.Tensor("CORR", value(request, "CORRID")),
                pb_utils.Tensor("BATCH", np.full((1, 1), len(requests), np.int32)),
            ]))
        return responses
