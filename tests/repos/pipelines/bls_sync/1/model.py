import dagserve


class Model:
    def __init__(self, context):
        self.context = context

    def infer(self, inputs):
        a = dagserve.call_model_sync(self.context, "double", inputs)
        b = dagserve.call_model_sync(self.context, "triple", inputs, outputs=["Y"])
        return {"Y": a["Y"] + b["Y"]}
