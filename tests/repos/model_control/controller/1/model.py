import json

import numpy as np
import triton_python_backend_utils as pb_utils

# A model made only of the files sent with the load: Y = X * 10.
MADE = b"""
def infer(inputs):
    return {"Y": inputs["X"] * 10}
"""
MADE_CONFIG = json.dumps({
    "backend": "python",
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
})
# The repository's target with its parameter overridden by the load's config.
TARGET_CONFIG = json.dumps({
    "backend": "python",
    "parameters": {"factor": {"string_value": "3"}},
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2]}],
})


def text(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return "" if tensor is None else tensor.as_numpy().reshape(-1)[0].decode()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            action, name, version = text(request, "ACTION"), text(request, "NAME"), text(request, "VERSION")
            try:
                if action == "load":
                    pb_utils.load_model(name)
                    result = "ok"
                elif action == "load_config":
                    pb_utils.load_model(model_name=name, config=TARGET_CONFIG)
                    result = "ok"
                elif action == "load_files":
                    pb_utils.load_model(name, config=MADE_CONFIG, files={"file:1/model.py": MADE})
                    result = "ok"
                elif action == "load_bad_files":
                    pb_utils.load_model(name, config=MADE_CONFIG, files=["file:1/model.py"])
                    result = "ok"
                elif action == "unload":
                    pb_utils.unload_model(name)
                    result = "ok"
                elif action == "unload_dependents":
                    pb_utils.unload_model(model_name=name, unload_dependents=True)
                    result = "ok"
                elif action == "ready":
                    result = str(pb_utils.is_model_ready(model_name=name, model_version=version))
                else:
                    result = f"unknown action {action}"
            except pb_utils.TritonModelException as exc:
                result = str(exc)
            out = pb_utils.Tensor("RESULT", np.array([result.encode()], dtype=object))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses
