"""classify_bls with ``async def execute``: the three BLS calls of each request are awaited
(``async_exec``), and the requests of one execute run their chains concurrently."""
import asyncio

import triton_python_backend_utils as pb_utils

STEPS = (
    ("preprocess", "RAW", ["FEATURES"]),
    ("classifier", "FEATURES", ["LOGITS"]),
    ("postprocess", "LOGITS", ["LABEL", "SCORE"]),
)


class TritonPythonModel:
    async def execute(self, requests):
        return await asyncio.gather(*(self._classify(request) for request in requests))

    async def _classify(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "RAW")
        for model, name, outputs in STEPS:
            reply = await pb_utils.InferenceRequest(
                model_name=model, requested_output_names=outputs,
                inputs=[pb_utils.Tensor(name, tensor.as_numpy())],
            ).async_exec()
            if reply.has_error():
                return pb_utils.InferenceResponse(error=reply.error())
            tensor = pb_utils.get_output_tensor_by_name(reply, outputs[0])
        return pb_utils.InferenceResponse(reply.output_tensors())
