"""Blocking decoupled BLS that needs each response before the next one exists.

Its "mode" parameter picks the callee: "handshake" (acknowledges each response by creating
"ack<i>" in the "dir" parameter's directory, so the callee can send the next), or "endless"
(takes three responses, then cancel()s the iterator). VALUES are the I received, ERRORS the
error messages joined with "|"."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            n = pb_utils.get_input_tensor_by_name(request, "N")
            bls = pb_utils.InferenceRequest(
                model_name=params["mode"], requested_output_names=["I"], inputs=[pb_utils.Tensor("N", n.as_numpy())],
                parameters={"dir": params["dir"]},
            )
            iterator = bls.exec(decoupled=True)
            values, errors = [], []
            for response in iterator:
                if response.has_error():
                    errors.append(response.error().message())
                elif response.output_tensors():
                    i = int(pb_utils.get_output_tensor_by_name(response, "I").as_numpy()[0])
                    values.append(i)
                    if params["mode"] == "handshake":
                        open(os.path.join(params["dir"], f"ack{i}"), "w").close()
                    elif len(values) == 3:
                        iterator.cancel()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("VALUES", np.array(values, dtype=np.int32)),
                pb_utils.Tensor("ERRORS", np.array(["|".join(errors).encode()], dtype=np.object_)),
            ]))
        return responses
