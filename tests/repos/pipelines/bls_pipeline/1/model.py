"""pb_utils BLS into a pipeline: calls classify_yaml (or a missing model when RAW is empty)."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW")
            target = "classify_yaml" if raw.as_numpy().size else "no_such_pipeline"
            reply = pb_utils.InferenceRequest(
                model_name=target, requested_output_names=["LABEL"], inputs=[raw]).exec()
            if reply.has_error():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(reply.error().message())))
            else:
                label = pb_utils.get_output_tensor_by_name(reply, "LABEL")
                responses.append(pb_utils.InferenceResponse([label]))
        return responses
