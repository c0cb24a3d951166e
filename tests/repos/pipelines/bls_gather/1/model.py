import asyncio

import numpy as np

import dagserve


class Model:
    def __init__(self, context):
        self.context = context

    async def infer(self, inputs):
        rows = inputs["FEATURES"]
        if len(rows) == 0:  # errors of a call are raised, with their class
            await dagserve.call_model(self.context, "no_such_model", {"FEATURES": rows})
        calls = [dagserve.call_model(self.context, "classifier", {"FEATURES": rows[i:i + 1]}) for i in range(len(rows))]
        results = await asyncio.gather(*calls)
        return {"LOGITS": np.concatenate([r["LOGITS"] for r in results])}
