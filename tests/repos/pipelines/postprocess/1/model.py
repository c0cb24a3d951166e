"""LOGITS -> the winning class name and its softmax probability."""
import numpy as np
import triton_python_backend_utils as pb_utils

LABELS = np.array([b"cat", b"dog", b"bird", b"fish"], dtype=object)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            p = np.exp(logits - logits.max())
            p /= p.sum()
            k = int(np.argmax(p))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("LABEL", LABELS[k:k + 1]),
                pb_utils.Tensor("SCORE", np.array([p[k]], dtype=np.float32)),
            ]))
        return responses
