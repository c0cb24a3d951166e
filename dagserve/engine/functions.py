"""Function steps served by their pipeline (see :mod:`dagserve.dsl.functions`).

Each step of a pipeline that calls a Python function is served as a model of its own,
``<pipeline>.<step>``: a :class:`~.model.ModelVersion` with the config the function's
declaration makes, so it has its own dynamic batcher, statistics, metrics and input/output
checks. The pipeline owns those versions: each version of the pipeline loads its own (the
function version has the pipeline version's number), calls them directly through
:class:`WithFunctions` rather than by name, and they unload with it. The server lists them
(index, metadata, statistics) under their names while the pipeline that owns them serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..types import InferRequest, InferResponse

if TYPE_CHECKING:
    from .model import ModelVersion
    from .pipeline_runner import Emit, Members

__all__ = ["WithFunctions"]


class WithFunctions:
    """The :class:`~.pipeline_runner.Members` of a pipeline with function steps: its own
    function versions by name, every other member from the server."""

    __slots__ = ("_own", "_server")

    def __init__(self, server: Members, own: Mapping[str, ModelVersion]) -> None:
        self._server = server
        self._own = dict(own)

    def get_version(self, name: str, version: str = "") -> ModelVersion:
        own = self._own.get(name)
        return own if own is not None else self._server.get_version(name, version)

    def model_names(self) -> list[str]:
        return sorted({*self._server.model_names(), *self._own})

    def loaded_version(self, name: str) -> ModelVersion | None:
        own = self._own.get(name)
        return own if own is not None else self._server.loaded_version(name)

    async def infer(self, name: str, version: str, request: InferRequest) -> InferResponse:
        own = self._own.get(name)
        if own is not None:
            return await own.infer(request)
        return await self._server.infer(name, version, request)

    async def infer_stream(self, name: str, version: str, request: InferRequest, emit: Emit) -> None:
        own = self._own.get(name)
        if own is not None:
            await own.infer_stream(request, emit)
        else:
            await self._server.infer_stream(name, version, request, emit)
