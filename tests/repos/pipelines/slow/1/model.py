import anyio


class Model:
    def __init__(self, context):
        self.delay = float(context.config.parameters["delay"])

    async def infer(self, inputs):
        await anyio.sleep(self.delay)
        return {"Y": inputs["X"] + 1}
