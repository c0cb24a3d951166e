from dagserve import InvalidInputError


def infer(inputs):
    x = inputs["X"]
    if (x < 0).any():
        raise InvalidInputError("X must not be negative")
    if (x > 1000).any():
        raise RuntimeError("overflow")
    return {"Y": x}
