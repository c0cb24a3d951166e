"""Pipelines declared in Python files (``pipeline_file`` of a ``backend: pipeline`` config).

The file is imported once, when the pipeline loads; it must leave a module-level ``pipeline``
that is a :class:`~dagserve.dsl.spec.PipelineSpec` (e.g. made with the ``@pipeline()``
decorator) or a :class:`~dagserve.dsl.builder.Pipeline` (built here). The spec takes the model
directory's name; the file declares the inputs and outputs, so the config does not repeat them.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from pathlib import Path

from ..backends._imports import import_file
from ..errors import ConfigError
from ..repository.config import ModelConfig
from .builder import Pipeline
from .spec import PipelineSpec

__all__ = ["load_pipeline_file"]


def load_pipeline_file(config: ModelConfig, *, model_dir: Path) -> PipelineSpec:
    """Import ``model_dir / config.pipeline_file`` and return its pipeline, named ``config.name``.

    Raises:
        ConfigError: no such file, the file fails to import, it defines no ``pipeline``, or the
            config also declares inputs/outputs (they belong to the file).
    """
    assert config.pipeline_file is not None
    path = model_dir / config.pipeline_file
    if not path.is_file():
        raise ConfigError(f"{model_dir}: pipeline_file '{config.pipeline_file}' does not exist")
    if config.input or config.output:
        raise ConfigError(
            f"{model_dir}: a pipeline built in {config.pipeline_file} declares its inputs and outputs there; "
            "remove inputs/outputs from the config"
        )
    spec = spec_of(_import(path), path)
    if spec.name and spec.name != config.name:
        raise ConfigError(f"{path}: pipeline '{spec.name}' does not match the directory name '{config.name}'")
    if config.max_batch_size and config.max_batch_size != spec.max_batch_size:
        raise ConfigError(
            f"{path}: max_batch_size {spec.max_batch_size} differs from the config's {config.max_batch_size}"
        )
    return dataclasses.replace(spec, name=config.name, origin=spec.origin or str(path))


def spec_of(module: object, path: Path) -> PipelineSpec:
    """The module's ``pipeline``, built if it is a :class:`Pipeline`.

    Raises:
        ConfigError: there is none, or it is of another type.
    """
    found = getattr(module, "pipeline", None)
    if isinstance(found, Pipeline):
        return found.build()
    if isinstance(found, PipelineSpec):
        return found
    got = "nothing" if found is None else f"a {type(found).__name__}"
    raise ConfigError(f"{path}: expected a module-level 'pipeline' (a Pipeline or PipelineSpec), found {got}")


def _import(path: Path) -> object:
    try:
        return import_file(path, f"pipeline_{path.parent.name}")
    except ConfigError:
        raise
    except Exception as exc:  # user code may raise anything while importing
        raise ConfigError(f"{path}{_line_in(exc, path)}: failed to import: {type(exc).__name__}: {exc}") from exc


def _line_in(exc: BaseException, path: Path) -> str:
    """``":line"`` of the last place in ``path`` that the exception went through (a syntax
    error's own line), or ``""``."""
    target = os.path.realpath(path)
    if isinstance(exc, SyntaxError) and exc.filename and os.path.realpath(exc.filename) == target and exc.lineno:
        return f":{exc.lineno}"
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.realpath(frame.f_code.co_filename) == target:
            line = lineno
    return f":{line}" if line else ""
