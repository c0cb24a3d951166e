"""Answers PARAMS = request.parameters(), the JSON text Triton's Python backend gives."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([
                pb_utils.Tensor("PARAMS", np.array([request.parameters().encode()], dtype=np.object_))
            ])
            for request in requests
        ]
