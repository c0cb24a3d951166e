"""Fails on purpose. MODE 0: answers; 1: raises an exception; 2: returns a TritonError."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0])
            if mode == 1:
                raise ValueError("secret internal detail")
            if mode == 2:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("MODE 2 is not allowed", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy())]))
        return responses
