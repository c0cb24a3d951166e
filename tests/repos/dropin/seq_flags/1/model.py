"""A running sum per sequence, kept by the model itself (keyed by the CORRID control).

FLAGS is request.flags() (START = 1, END = 2), CONTROLS the START, END and READY control
inputs, CORR the CORRID control and TOTAL the sum of X since the sequence's START."""
import numpy as np
import triton_python_backend_utils as pb_utils


def value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self.totals = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            corrid = int(value(request, "CORRID").reshape(-1)[0])
            start = int(value(request, "START").reshape(-1)[0])
            if start:
                self.totals[corrid] = 0
            self.totals[corrid] = self.totals.get(corrid, 0) + int(value(request, "X").reshape(-1)[0])
            total = self.totals[corrid]
            if int(value(request, "END").reshape(-1)[0]):
                del self.totals[corrid]
            controls = np.concatenate([value(request, "START"), value(request, "END"), value(request, "READY")], axis=1)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("FLAGS", np.array([[request.flags()]], np.int32)),
                pb_utils.Tensor("CONTROLS", controls.astype(np.int32)),
                pb_utils.Tensor("CORR", value(request, "CORRID").astype(np.uint64)),
                pb_utils.Tensor("TOTAL", np.array([[total]], np.int32)),
            ]))
        return responses
