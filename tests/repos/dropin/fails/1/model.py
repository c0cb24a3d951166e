"""Fails on request, in each way a Triton Python model can.

MODE 0 answers OUT = MODE; 1 raises ValueError; 2 returns a TritonError with INVALID_ARG;
3 raises pb_utils.TritonModelException; 4 returns a TritonError without a code (INTERNAL)."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            mode_tensor = pb_utils.get_input_tensor_by_name(request, "MODE")
            mode = int(mode_tensor.as_numpy()[0])
            if mode == 1:
                raise ValueError("mode 1 is not supported")
            if mode == 3:
                raise pb_utils.TritonModelException("mode 3 broke the model")
            if mode == 2:
                error = pb_utils.TritonError("mode 2 is refused", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            elif mode == 4:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("mode 4 went wrong")))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", mode_tensor.as_numpy())]))
        return responses
