class Model:
    def __init__(self, context):
        self.factor = float(context.config.parameters["factor"])

    def infer(self, inputs):
        return {"Y": inputs["X"] * self.factor}
