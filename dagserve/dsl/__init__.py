"""Pipeline definitions: Triton ensembles, native YAML and the Python DSL, compiled to one
frozen graph spec, checked against the member models, and lowered to an execution plan.

Layering: imports the repository schema, backends' context protocol and types; never the
engine, web frameworks or ML frameworks. Runtime (BLS calls, execution) is the engine's.
"""

from .builder import Pipeline, StepRef, Switch, loop, pipeline
from .compile import compile_config
from .conditions import Condition, Op, Param, parse_condition
from .spec import FirstOf, GatherSpec, LoopSpec, OutputSpec, PipelineSpec, StepSpec, TensorRef
from .typecheck import CheckedPipeline, check_pipeline

__all__ = [
    "CheckedPipeline",
    "Condition",
    "FirstOf",
    "GatherSpec",
    "LoopSpec",
    "Op",
    "OutputSpec",
    "Param",
    "Pipeline",
    "PipelineSpec",
    "StepRef",
    "StepSpec",
    "Switch",
    "TensorRef",
    "check_pipeline",
    "compile_config",
    "loop",
    "parse_condition",
    "pipeline",
]
