"""Decoupled: sends I = 0, 1, 2, ... every 10 ms until its sender reports is_cancelled() (at
most 6000 responses), then writes how many it sent to the file "stopped" in the "dir"
parameter's directory."""
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            folder = json.loads(request.parameters())["dir"]
            sent = 0
            while sent < 6000 and not sender.is_cancelled():
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([sent], np.int32))]))
                sent += 1
                time.sleep(0.01)
            with open(os.path.join(folder, "stopped"), "w") as f:
                f.write(str(sent))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
