"""LOGITS -> the winning class name and its softmax probability, per row."""
import numpy as np
import triton_python_backend_utils as pb_utils

LABELS = np.array([b"cat", b"dog", b"bird", b"fish"], dtype=object)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            k = np.argmax(p, axis=1)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("LABEL", LABELS[k].reshape(-1, 1)),
                pb_utils.Tensor("SCORE", p[np.arange(len(k)), k].reshape(-1, 1).astype(np.float32)),
            ]))
        return responses
