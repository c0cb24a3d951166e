import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tag = pb_utils.get_input_tensor_by_name(request, "TAG")
            text = tag.as_numpy().reshape(-1)[0].decode()
            pb_utils.Logger.log_verbose(f"{text} verbose")
            pb_utils.Logger.log_info(f"{text} info")
            pb_utils.Logger.log_warn(f"{text} warning")
            pb_utils.Logger.log(f"{text} error", pb_utils.Logger.LogLevel.ERROR)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TAG_OUT", tag.as_numpy())]))
        return responses
