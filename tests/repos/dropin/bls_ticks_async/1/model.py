"""As bls_ticks, with `async def execute` and `await request.async_exec(decoupled=True)`;
two BLS requests run at once (asyncio.gather), and the second's responses are summarized."""
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def summarize(responses):
    values, empty, errors = [], 0, []
    for response in responses:
        if response.has_error():
            errors.append(response.error().message())
        elif len(response.output_tensors()) == 0:
            empty += 1
        else:
            values.append(int(pb_utils.get_output_tensor_by_name(response, "I").as_numpy()[0]))
    return pb_utils.InferenceResponse([
        pb_utils.Tensor("VALUES", np.array(values, dtype=np.int32)),
        pb_utils.Tensor("EMPTY", np.array([empty], dtype=np.int32)),
        pb_utils.Tensor("ERRORS", np.array(["|".join(errors).encode()], dtype=np.object_)),
    ])


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "N").as_numpy()
            calls = [
                pb_utils.InferenceRequest(
                    model_name="ticker", requested_output_names=["I"], inputs=[pb_utils.Tensor("N", value)]
                ).async_exec(decoupled=True)
                for value in (np.array([1], np.int32), n)
            ]
            _, iterator = await asyncio.gather(*calls)
            responses.append(summarize(iterator))
        return responses
