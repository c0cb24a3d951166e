"""Calls `fails` through BLS and answers with the error it got: MESSAGE is
`response.error().message()` ("" when it succeeded), CODE is `error().code()` (-1 if none)."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE")
            bls = pb_utils.InferenceRequest(
                model_name="fails", requested_output_names=["OUT"], inputs=[pb_utils.Tensor("MODE", mode.as_numpy())]
            )
            response = bls.exec()
            message, code = "", -1
            if response.has_error():
                message, code = response.error().message(), int(response.error().code())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("MESSAGE", np.array([message.encode()], dtype=np.object_)),
                pb_utils.Tensor("CODE", np.array([code], dtype=np.int32)),
            ]))
        return responses
