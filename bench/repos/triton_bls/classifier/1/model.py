"""A linear classifier: LOGITS = FEATURES @ W, one matmul over the whole dynamic batch."""
import numpy as np
import triton_python_backend_utils as pb_utils

W = np.zeros((16, 4), dtype=np.float32)
W[np.arange(16), np.arange(16) % 4] = 1.0


class TritonPythonModel:
    def execute(self, requests):
        features = [pb_utils.get_input_tensor_by_name(r, "FEATURES").as_numpy() for r in requests]
        logits = np.concatenate(features) @ W
        responses, start = [], 0
        for f in features:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("LOGITS", logits[start:start + len(f)])]))
            start += len(f)
        return responses
