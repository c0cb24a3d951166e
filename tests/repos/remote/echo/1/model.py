"""Passes X through and reports the request's id and parameters as JSON."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            seen = {"id": request.request_id(), "parameters": json.loads(request.parameters())}
            text = json.dumps(seen, sort_keys=True).encode()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x), pb_utils.Tensor("PARAMS", np.array([text], dtype=object))]))
        return responses
