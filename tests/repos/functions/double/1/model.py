def infer(inputs):
    return {"Y": inputs["X"] * 2}
