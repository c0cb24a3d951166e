"""preprocess -> classifier -> postprocess through three blocking BLS calls per request.

The chain of bench/repos/triton_ensemble's `classify` ensemble written by hand, as users write
BLS: each step is ``pb_utils.InferenceRequest(...).exec()``, and a step's error becomes this
request's error response.
"""
import triton_python_backend_utils as pb_utils

STEPS = (
    ("preprocess", "RAW", ["FEATURES"]),
    ("classifier", "FEATURES", ["LOGITS"]),
    ("postprocess", "LOGITS", ["LABEL", "SCORE"]),
)


class TritonPythonModel:
    def execute(self, requests):
        return [self._classify(request) for request in requests]

    def _classify(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "RAW")
        for model, name, outputs in STEPS:
            reply = pb_utils.InferenceRequest(
                model_name=model, requested_output_names=outputs,
                inputs=[pb_utils.Tensor(name, tensor.as_numpy())],
            ).exec()
            if reply.has_error():
                return pb_utils.InferenceResponse(error=reply.error())
            tensor = pb_utils.get_output_tensor_by_name(reply, outputs[0])
        return pb_utils.InferenceResponse(reply.output_tensors())
