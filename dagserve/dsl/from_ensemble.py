"""Triton ensembles (``platform: "ensemble"`` with ``ensemble_scheduling``) -> PipelineSpec.

Triton wires steps through named *ensemble tensors*: a step's ``input_map`` maps each model
input to the ensemble tensor it reads, its ``output_map`` each model output to the ensemble
tensor it writes. The spec has no such middle names, so each ensemble tensor is resolved to
its producer: an ensemble input, or one output of one step. Steps get the name of their model
(``model``, ``model_2``, ... when a model appears more than once).

The mapping problems only this form can have are reported here, in Triton's words plus the
file and step: a tensor written by two steps (or by a step and the request), a tensor nobody
writes, an ensemble output that is not written.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..repository.config import ModelConfig
from .spec import OutputSpec, PipelineSpec, StepSpec, TensorRef

__all__ = ["compile_ensemble"]


def compile_ensemble(config: ModelConfig, *, origin: Path | str = "") -> PipelineSpec:
    """The spec of an ensemble config.

    Raises:
        ConfigError: the ensemble's tensor mapping is inconsistent; the message names the file,
            the step (``ensemble_scheduling.step[i]``, model) and the ensemble tensor.
    """
    assert config.ensemble_scheduling is not None
    where = f"{origin}: " if origin else ""
    ensemble = f"ensemble '{config.name}'"
    steps = config.ensemble_scheduling.step
    if not steps:
        raise ConfigError(f"{where}{ensemble}: ensemble_scheduling has no step")

    names = _step_names([s.model_name for s in steps])
    inputs = {t.name for t in config.input}
    producers: dict[str, TensorRef] = {name: TensorRef(name=name) for name in inputs}
    for i, (step, name) in enumerate(zip(steps, names)):
        for output, tensor in step.output_map.items():
            if tensor in producers:
                first = producers[tensor]
                what = "the request (an ensemble input)" if first.step is None else f"step '{first.step}'"
                raise ConfigError(
                    f"{where}{ensemble}, ensemble_scheduling.step[{i}] (model '{step.model_name}'): "
                    f"ensemble tensor '{tensor}' is written by output '{output}' and also by {what}; "
                    "a tensor must have exactly one producer"
                )
            producers[tensor] = TensorRef(step=name, name=output)

    compiled = []
    for i, (step, name) in enumerate(zip(steps, names)):
        step_origin = (
            f"{origin}: ensemble_scheduling.step[{i}]" if origin else f"ensemble_scheduling.step[{i}]"
        )
        wired = {}
        for model_input, tensor in step.input_map.items():
            ref = producers.get(tensor)
            if ref is None:
                raise ConfigError(
                    f"{where}{ensemble}, ensemble_scheduling.step[{i}] (model '{step.model_name}'): "
                    f"input '{model_input}' reads ensemble tensor '{tensor}', which no step writes "
                    f"and which is not an ensemble input (inputs: {', '.join(sorted(inputs)) or 'none'})"
                )
            wired[model_input] = ref
        compiled.append(
            StepSpec(
                name=name,
                model=step.model_name,
                model_version=step.model_version,
                inputs=wired,
                origin=step_origin,
            )
        )

    outputs = []
    for t in config.output:
        ref = producers.get(t.name)
        if ref is None or ref.step is None:
            raise ConfigError(f"{where}output '{t.name}' for {ensemble} is not written by any step")
        outputs.append(
            OutputSpec(name=t.name, source=ref, datatype=t.data_type, shape=t.dims, optional=t.optional)
        )
    return PipelineSpec(
        name=config.name,
        inputs=tuple(t.spec() for t in config.input),
        outputs=tuple(outputs),
        steps=tuple(compiled),
        max_batch_size=config.max_batch_size,
        max_inflight_requests=config.ensemble_scheduling.max_inflight_requests,
        origin=str(origin),
    )


def _step_names(models: list[str]) -> list[str]:
    """One unique step name per step: the model's name, numbered from the second use on."""
    seen: dict[str, int] = {}
    names = []
    for model in models:
        seen[model] = seen.get(model, 0) + 1
        names.append(model if seen[model] == 1 else f"{model}_{seen[model]}")
    return names
