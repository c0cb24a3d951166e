"""Pipelines (Triton ensembles and native YAML/DSL pipelines) as models: not built yet."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedError
from ..repository.config import ModelConfig
from ..repository.loader import ModelSource


async def load_pipeline(server: Any, source: ModelSource, config: ModelConfig) -> Any:
    """Compile and return the pipeline's runner.

    Raises:
        UnsupportedError: always, until the pipeline executor lands.
    """
    raise UnsupportedError(f"model '{source.name}': pipelines and ensembles are not supported yet")
