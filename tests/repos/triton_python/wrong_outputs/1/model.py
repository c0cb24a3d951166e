"""Answers wrongly on purpose. MODE 0: correct; 1: missing output; 2: wrong dtype;
3: wrong shape; 4: undeclared extra output; 5: too few responses."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            good = pb_utils.Tensor("OUT", np.zeros(2, dtype=np.float32))
            outputs = {
                0: [good],
                1: [],
                2: [pb_utils.Tensor("OUT", np.zeros(2, dtype=np.int64))],
                3: [pb_utils.Tensor("OUT", np.zeros(3, dtype=np.float32))],
                4: [good, pb_utils.Tensor("EXTRA", np.zeros(1, dtype=np.float32))],
            }.get(mode)
            if outputs is None:
                return []
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
