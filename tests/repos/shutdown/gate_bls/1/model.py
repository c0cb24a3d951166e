import os
import uuid
from pathlib import Path

import anyio

import dagserve


class Model:
    def __init__(self, context):
        self.context = context
        self.gate = Path(os.environ["DAGSERVE_TEST_GATE"])

    async def infer(self, inputs):
        # Wait for the gate before the BLS call, so the call starts during a drain.
        (self.gate / "arrived").mkdir(parents=True, exist_ok=True)
        (self.gate / "arrived" / uuid.uuid4().hex).touch()
        while not (self.gate / "open").exists():
            await anyio.sleep(0.01)
        out = await dagserve.call_model(self.context, "double", inputs)
        return {"Y": out["Y"] + 1}
