"""dagserve: a Python inference server for model pipelines, speaking KServe v2 / Triton's protocol.

The public API lives here; import from ``dagserve``, not from its submodules.
"""

from ._version import __version__
from .engine import ModelState, Server, ServerOptions
from .errors import (
    ConfigError,
    DagserveError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    UnsupportedError,
)
from .repository import ModelConfig
from .types import DataType, InferRequest, InferResponse, RequestedOutput, TensorSpec

__all__ = [
    "ConfigError",
    "DagserveError",
    "DataType",
    "InferRequest",
    "InferResponse",
    "InvalidInputError",
    "ModelConfig",
    "ModelExecutionError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelState",
    "OverloadedError",
    "RequestedOutput",
    "Server",
    "ServerOptions",
    "TensorSpec",
    "UnsupportedError",
    "__version__",
]
