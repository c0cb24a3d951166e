import os
import time
import uuid
from pathlib import Path


class Model:
    def __init__(self, context):
        self.gate = Path(os.environ["DAGSERVE_TEST_GATE"])
        (self.gate / "held").mkdir(parents=True, exist_ok=True)

    def infer(self, inputs):
        (self.gate / "held" / uuid.uuid4().hex).touch()
        while not (self.gate / "release").exists():
            time.sleep(0.01)
        return {"Y": inputs["X"]}
