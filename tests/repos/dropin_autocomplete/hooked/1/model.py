"""Its config.pbtxt names only the backend; auto_complete_config asks for dynamic batching
without preferred sizes (max_batch_size 8) and no instance group. Triton then fills
preferred_batch_size [8] and one instance group. OUTPUT0 = INPUT0 + 1; KIND = the
model_instance_kind the instance was created with."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [1]})
        auto_complete_model_config.add_output({"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [1]})
        auto_complete_model_config.add_output({"name": "KIND", "data_type": "TYPE_STRING", "dims": [1]})
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def initialize(self, args):
        self.kind = args["model_instance_kind"]
        self.config = json.loads(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.int32)),
                pb_utils.Tensor("KIND", np.full((x.shape[0], 1), self.kind.encode(), np.object_)),
            ]))
        return responses
