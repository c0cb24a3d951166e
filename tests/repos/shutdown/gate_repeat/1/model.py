"""Decoupled: OUT = 0 at once, then OUT = 1..N-1 once the test's gate opens, then final."""
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.gate = Path(os.environ["DAGSERVE_TEST_GATE"])
        (self.gate / "arrived").mkdir(parents=True, exist_ok=True)

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            threading.Thread(target=self._answer, args=(request.get_response_sender(), n), daemon=True).start()

    def _answer(self, sender, n):
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([0], np.int32))]))
        (self.gate / "arrived" / uuid.uuid4().hex).touch()
        while not (self.gate / "open").exists():
            time.sleep(0.01)
        for i in range(1, n):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
