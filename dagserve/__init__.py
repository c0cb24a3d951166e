"""dagserve: a Python inference server for model pipelines, speaking KServe v2 / Triton's protocol.

The public API lives here; import from ``dagserve``, not from its submodules.
"""

from ._version import __version__
from .dsl import (
    Condition,
    LoopSpec,
    OutputSpec,
    Pipeline,
    PipelineSpec,
    StepSpec,
    TensorRef,
    infer,
    infer_sync,
    loop,
    pipeline,
)
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
    WorkerCrashedError,
)
from .limits import Limits
from .repository import ModelConfig
from .types import DataType, InferRequest, InferResponse, RequestedOutput, TensorSpec

__all__ = [
    "Condition",
    "ConfigError",
    "DagserveError",
    "DataType",
    "InferRequest",
    "InferResponse",
    "InvalidInputError",
    "Limits",
    "LoopSpec",
    "ModelConfig",
    "ModelExecutionError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelState",
    "OutputSpec",
    "OverloadedError",
    "Pipeline",
    "PipelineSpec",
    "RequestedOutput",
    "Server",
    "ServerOptions",
    "StepSpec",
    "TensorRef",
    "TensorSpec",
    "UnsupportedError",
    "WorkerCrashedError",
    "__version__",
    "infer",
    "infer_sync",
    "loop",
    "pipeline",
]
