import os
import uuid
from pathlib import Path

import anyio


class Model:
    def __init__(self, context):
        self.gate = Path(os.environ["DAGSERVE_TEST_GATE"])
        (self.gate / "arrived").mkdir(parents=True, exist_ok=True)

    async def infer(self, inputs):
        (self.gate / "arrived" / f"{os.getpid()}-{uuid.uuid4().hex}").touch()
        mine = self.gate / f"open-{os.getpid()}"  # a gate for this process only (--workers)
        while not ((self.gate / "open").exists() or mine.exists()):
            await anyio.sleep(0.01)
        return {"Y": inputs["X"] + 1}
