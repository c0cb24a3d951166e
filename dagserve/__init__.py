"""dagserve: a Python inference server for model pipelines, speaking KServe v2 / Triton's protocol.

The public API lives here; import from ``dagserve``, not from its submodules::

    import dagserve

    async with dagserve.Server("models") as server:                 # the engine, in process
        await server.add_model("double", lambda inputs: {"Y": inputs["X"] * 2}, config)
        response = await server.infer("double", "", dagserve.InferRequest(inputs={"X": x}))

    await dagserve.serve(dagserve.FrontendOptions(server=dagserve.ServerOptions(...)))  # + HTTP, gRPC, metrics

Inside a native Python model, :func:`call_model` / :func:`call_model_sync` call other models
(BLS). ``infer`` and ``infer_sync`` are their deprecated old names.
"""

from __future__ import annotations

from ._deprecation import renamed
from ._version import __version__
from .dsl.builder import Pipeline, Switch, loop, pipeline
from .dsl.conditions import Condition
from .dsl.functions import Function, function
from .dsl.spec import GatherSpec, LoopSpec, OutputSpec, PipelineSpec, StepSpec, TensorRef
from .engine.bls import call_model, call_model_sync
from .engine.latency import MetricsConfig
from .engine.model import ModelState
from .engine.server import Server, ServerOptions
from .errors import (
    AlreadyExistsError,
    ConfigError,
    DagserveError,
    InternalError,
    InvalidInputError,
    ModelExecutionError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    RegionExistsError,
    RegionNotFoundError,
    RequestCancelledError,
    RequestTimeoutError,
    UnsupportedError,
    WorkerCrashedError,
)
from .frontends.runner import Addresses, FrontendOptions, serve
from .limits import Limits
from .log_settings import LogSettings, log_control
from .repository.config import ModelConfig
from .tracing import TraceConfig
from .types import DataType, InferRequest, InferResponse, RequestedOutput, TensorSpec

__all__ = [
    "Addresses",
    "AlreadyExistsError",
    "Condition",
    "ConfigError",
    "DagserveError",
    "DataType",
    "FrontendOptions",
    "Function",
    "GatherSpec",
    "InferRequest",
    "InferResponse",
    "InternalError",
    "InvalidInputError",
    "Limits",
    "LogSettings",
    "LoopSpec",
    "MetricsConfig",
    "ModelConfig",
    "ModelExecutionError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelState",
    "OutputSpec",
    "OverloadedError",
    "Pipeline",
    "PipelineSpec",
    "RegionExistsError",
    "RegionNotFoundError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "RequestedOutput",
    "Server",
    "ServerOptions",
    "StepSpec",
    "Switch",
    "TensorRef",
    "TensorSpec",
    "TraceConfig",
    "UnsupportedError",
    "WorkerCrashedError",
    "__version__",
    "call_model",
    "call_model_sync",
    "function",
    "log_control",
    "loop",
    "pipeline",
    "serve",
]

__getattr__ = renamed(__name__, {"infer": call_model, "infer_sync": call_model_sync, "ServeOptions": FrontendOptions})
