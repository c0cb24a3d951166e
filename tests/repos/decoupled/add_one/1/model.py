"""An ordinary (not decoupled) model for the generate endpoints: Y = X + 1, echoes LABEL."""


def infer(inputs):
    return {"Y": inputs["X"] + 1, "LABEL_OUT": inputs["LABEL"]}
