"""Holds each request until the file named by its "gate" parameter exists (at most 60 s),
then answers OUT = X; so a test can keep requests pending for as long as it needs. A
"started" parameter names a file it creates when it begins a request."""
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            gate = params.get("gate", "")
            if params.get("started"):
                open(params["started"], "w").close()
            deadline = time.monotonic() + 60
            while gate and not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            x = pb_utils.get_input_tensor_by_name(request, "X")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x.as_numpy())]))
        return responses
