"""Its config.pbtxt names only the backend; auto_complete_config supplies the rest, as the
python_backend README describes: a batching model (max_batch_size 8, dynamic batching) with
INPUT0 FP32 [2] -> OUTPUT0 = 2 * INPUT0 and BATCH = the rows of this execute call."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [2]})
        auto_complete_model_config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]})
        auto_complete_model_config.add_output({"name": "BATCH", "data_type": "TYPE_INT32", "dims": [1]})
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        auto_complete_model_config.set_model_transaction_policy({"decoupled": False})
        return auto_complete_model_config

    def execute(self, requests):
        rows = sum(pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy().shape[0] for r in requests)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32)),
                pb_utils.Tensor("BATCH", np.full((x.shape[0], 1), rows, np.int32)),
            ]))
        return responses
