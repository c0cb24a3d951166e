"""PipelineSpec -> the ``pipeline:`` section of a native YAML config.

A pipeline built with the Python DSL (``pipeline.py``, or ``Server.add_pipeline``) has no
``pipeline:`` section of its own; the server writes this one into its served config, so
``GET /v2/models/NAME/config`` shows the graph of every dagserve pipeline in one shape, the
shape a YAML pipeline is written in. Reading the section back with
:func:`~dagserve.dsl.from_yaml.compile_yaml` gives the same steps and output sources.

A ``switch`` of the DSL has already become one ``when`` condition per case step in the spec,
so it comes out as those conditions (the same graph, spelt the long way). A function step
comes out as YAML names one, ``function: module:name``, the module being the stem of the file
that declares the function (``pipeline:summarize`` for one declared in ``pipeline.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .refs import FirstOf, Source
from .spec import DEFAULT_COUNTS, STACK, GatherSpec, PipelineSpec, StepSpec

__all__ = ["pipeline_section"]


def pipeline_section(spec: PipelineSpec) -> dict[str, Any]:
    """The ``pipeline:`` mapping (``steps``, ``outputs``, ``max_inflight_requests`` and
    ``one_of`` when set) that a YAML config would hold for ``spec``; JSON-serializable."""
    section: dict[str, Any] = {
        "steps": [_step(s) for s in spec.steps],
        "outputs": {o.name: _source(o.source) for o in spec.outputs},
    }
    if spec.max_inflight_requests:
        section["max_inflight_requests"] = spec.max_inflight_requests
    if spec.one_of:
        section["one_of"] = [list(group) for group in spec.one_of]
    return section


def _source(source: Source) -> str | list[str]:
    if isinstance(source, FirstOf):
        return [str(r) for r in source.refs]
    return str(source)


def _step(step: StepSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": step.name}
    if step.function is not None:
        module = Path(step.function.origin.rpartition(":")[0]).stem
        out["function"] = f"{module}:{step.function.name}"
    else:
        out["model"] = step.model
    if step.model_version != -1:
        out["version"] = step.model_version
    out["inputs"] = {k: _source(v) for k, v in step.inputs.items()}
    if step.when is not None:
        out["when"] = str(step.when)
    if step.map_over:
        out["map"] = list(step.map_over)
    if step.gather != STACK:
        out["gather"] = _gather(step.gather)
    if step.loop is not None:
        loop: dict[str, Any] = {"max_iterations": step.loop.max_iterations}
        if step.loop.carry:
            loop["carry"] = dict(step.loop.carry)
        if step.loop.until is not None:
            loop["until"] = str(step.loop.until)
        out["loop"] = loop
    return out


def _gather(gather: GatherSpec) -> str | dict[str, Any]:
    """``gather: MODE`` when the mode says it all, else the mapping with its fields."""
    default_counts = DEFAULT_COUNTS if gather.mode == "concat" else ""
    if gather.value is None and gather.counts == default_counts:
        return gather.mode
    out: dict[str, Any] = {"mode": gather.mode}
    if gather.counts != default_counts:
        out["counts"] = gather.counts
    if gather.value is not None:
        out["value"] = gather.value.decode() if isinstance(gather.value, bytes) else gather.value
    return out
