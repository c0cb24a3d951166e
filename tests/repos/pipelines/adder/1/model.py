def infer(inputs):
    return {"SUM": inputs["A"] + inputs["B"]}
