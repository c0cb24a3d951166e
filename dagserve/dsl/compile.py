"""From a pipeline model's config to its :class:`PipelineSpec`, whichever form it is written in."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..repository.config import ModelConfig
from .from_ensemble import compile_ensemble
from .from_python import load_pipeline_file
from .from_yaml import compile_yaml
from .spec import PipelineSpec

__all__ = ["compile_config", "member_names"]


def compile_config(config: ModelConfig, *, model_dir: Path, config_path: Path | None = None) -> PipelineSpec:
    """The spec of a pipeline model: a Triton ensemble (``ensemble_scheduling``), a YAML
    pipeline (``pipeline``) or a Python one (``pipeline_file``, imported from ``model_dir``;
    ``pipeline.py`` when the config gives none of the three).

    Raises:
        ConfigError: none or several of the three are given, or the one given is malformed.
    """
    forms = [
        name
        for name, value in (
            ("ensemble_scheduling", config.ensemble_scheduling),
            ("pipeline", config.pipeline),
            ("pipeline_file", config.pipeline_file),
        )
        if value is not None
    ]
    origin = config_path or model_dir
    if not forms and (model_dir / "pipeline.py").is_file():
        forms, config = ["pipeline_file"], config.model_copy(update={"pipeline_file": "pipeline.py"})
    if len(forms) != 1:
        given = " and ".join(forms) if forms else "none of them"
        raise ConfigError(
            f"{origin}: a pipeline needs exactly one of ensemble_scheduling, pipeline or pipeline_file (got {given})"
        )
    if config.ensemble_scheduling is not None:
        return compile_ensemble(config, origin=origin)
    if config.pipeline is not None:
        return compile_yaml(config, path=config_path, model_dir=model_dir)
    return load_pipeline_file(config, model_dir=model_dir)


def member_names(config: ModelConfig) -> set[str] | None:
    """The models a pipeline config calls, read without compiling it; None when only importing
    its ``pipeline_file`` would tell. Used to load nested pipelines after their members."""
    if config.ensemble_scheduling is not None:
        return {s.model_name for s in config.ensemble_scheduling.step}
    if config.pipeline is None:
        return None
    names: set[str] = set()
    for entry in config.pipeline.get("steps") or ():
        if not isinstance(entry, dict):
            continue
        groups = (
            [entry]
            if "switch" not in entry
            else [
                *(s for case in (entry.get("cases") or {}).values() for s in case or ()),
                *(entry.get("default") or ()),
            ]
        )
        # function steps are served by the pipeline itself
        names.update(str(s["model"]) for s in groups if isinstance(s, dict) and "model" in s)
    return names
