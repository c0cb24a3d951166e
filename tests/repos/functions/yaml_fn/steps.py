"""scale: y = 3 x. A row [99, 99] holds the call on the gate FUNCTION_GATE names (FileGate)."""

import os
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import dagserve


@dagserve.function(inputs={"x": [2]}, outputs={"y": [2]}, max_batch_size=8)
def scale(x: NDArray[np.float32]) -> NDArray[np.float32]:
    if (x == 99).all(axis=1).any():
        gate = Path(os.environ["FUNCTION_GATE"])
        (gate / "started").touch()
        while not (gate / "release").exists():
            time.sleep(0.005)
    return x * 3
