import anyio


class Model:
    def __init__(self, context):
        pass

    async def infer(self, inputs):
        await anyio.sleep(float(inputs["X"][0]) / 1000)
        return {"Y": inputs["X"] + 1}
