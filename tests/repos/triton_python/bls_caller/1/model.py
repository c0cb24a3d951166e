"""BLS: calls add_sub and multiplies its two outputs; a missing model surfaces as an error."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            target = "no_such_model" if a[0] < 0 else "add_sub"
            bls = pb_utils.InferenceRequest(
                model_name=target,
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", b)])
            reply = bls.exec()
            if reply.has_error():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(reply.error().message())))
                continue
            s = pb_utils.get_output_tensor_by_name(reply, "OUTPUT0").as_numpy()
            d = pb_utils.get_output_tensor_by_name(reply, "OUTPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM_TIMES_DIFF", s * d)]))
        return responses
