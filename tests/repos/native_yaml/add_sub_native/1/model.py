"""Native form: a plain function over dicts of numpy arrays."""


def infer(inputs):
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}
