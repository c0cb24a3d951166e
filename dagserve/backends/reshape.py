"""Triton's ``reshape`` of inputs and outputs, for every backend.

A tensor's ``dims`` are what clients send and receive (and what metadata shows); its
``reshape: {shape: [...]}`` is what the model sees. For an input, each request's array is
reshaped from its config dims to the reshape dims before ``execute``; for an output, the
model's array (in the reshape dims) is reshaped back to the config dims before it is checked
and returned. With batching the batch dimension is kept as is and only the rest is reshaped.
The element counts must agree: a request whose input cannot be reshaped fails alone with
:class:`~dagserve.errors.InvalidInputError`; a model output that cannot be reshaped back fails
its request with :class:`~dagserve.errors.ModelExecutionError`.

:func:`with_reshape` wraps a loaded instance; a backend that reshapes itself (ONNX Runtime
checks the reshape dims against the graph) is not wrapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ModelExecutionError
from ..repository.config import ModelConfig
from ..types import InferRequest, ResponseSender
from .base import ExecuteMode, ModelInstance, Outputs

__all__ = ["ReshapedInstance", "with_reshape"]


def with_reshape(instance: ModelInstance, config: ModelConfig) -> ModelInstance:
    """``instance`` itself when no tensor of ``config`` has a ``reshape``, else a wrapper
    that reshapes inputs on the way in and outputs on the way out."""
    inputs = {t.name: t.reshape.shape for t in config.input if t.reshape is not None}
    outputs = {t.name: t.dims for t in config.output if t.reshape is not None}
    if not inputs and not outputs:
        return instance
    return ReshapedInstance(instance, inputs=inputs, outputs=outputs, batching=config.batching, owner=config.name)


class ReshapedInstance:
    """A model instance seen through its config's ``reshape`` fields."""

    def __init__(
        self,
        inner: ModelInstance,
        *,
        inputs: Mapping[str, tuple[int, ...]],
        outputs: Mapping[str, tuple[int, ...]],
        batching: bool,
        owner: str,
    ) -> None:
        self.inner = inner
        self._inputs = dict(inputs)
        self._outputs = dict(outputs)
        self._batching = batching
        self._owner = owner

    @property
    def mode(self) -> ExecuteMode:
        """The inner instance's mode: the engine runs this wrapper as it would run it."""
        return self.inner.mode

    @mode.setter
    def mode(self, value: ExecuteMode) -> None:
        self.inner.mode = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute(self, requests: Sequence[InferRequest]) -> Any:
        """The inner instance's results for the reshaped requests, outputs reshaped back; a
        request whose inputs cannot be reshaped fails alone."""
        results: list[Outputs | BaseException | None] = []
        shaped: list[InferRequest] = []
        for request in requests:
            try:
                shaped.append(self._reshape_request(request))
                results.append(None)
            except InvalidInputError as exc:
                results.append(exc)
        if not shaped:
            return _maybe_async(self.mode, results)
        out = self.inner.execute(shaped)
        if self.mode == "async":
            return self._merge_async(out, results)
        return self._merge(out, results)

    async def _merge_async(self, pending: Any, results: list[Outputs | BaseException | None]) -> list[Outputs | BaseException]:
        return self._merge(await pending, results)

    def _merge(self, out: Sequence[Outputs | BaseException], results: list[Outputs | BaseException | None]) -> list[Outputs | BaseException]:
        if len(out) != sum(r is None for r in results):
            return list(out)  # a broken backend contract; the pool reports it
        produced = iter(out)
        merged: list[Outputs | BaseException] = []
        for r in results:
            if r is not None:
                merged.append(r)
                continue
            one = next(produced)
            merged.append(one if isinstance(one, BaseException) else self._reshape_outputs(one))
        return merged

    def _reshape_request(self, request: InferRequest) -> InferRequest:
        inputs = dict(request.inputs)
        for name, shape in self._inputs.items():
            array = inputs.get(name)
            if array is None:
                continue
            target = (array.shape[0], *shape) if self._batching and array.ndim else shape
            try:
                inputs[name] = array.reshape(target)
            except (ValueError, RuntimeError):
                raise InvalidInputError(
                    f"model '{self._owner}': input '{name}' of shape {list(array.shape)} cannot be reshaped "
                    f"to the model's {list(target)} (config reshape {list(shape)})"
                ) from None
        sender = request.sender
        if sender is not None and self._outputs:
            sender = _ReshapingSender(sender, self)
        return dataclasses.replace(request, inputs=inputs, sender=sender)

    def _reshape_outputs(self, outputs: Outputs) -> Outputs | BaseException:
        if not any(name in outputs for name in self._outputs):
            return outputs
        result = dict(outputs)
        for name, dims in self._outputs.items():
            array = result.get(name)
            if array is None:
                continue
            if not hasattr(array, "reshape"):  # a list or scalar from native Python code
                array = np.asarray(array)
            target = (array.shape[0], *dims) if self._batching and array.ndim else dims
            try:
                result[name] = array.reshape(target)
            except (ValueError, RuntimeError):
                return ModelExecutionError(
                    f"model '{self._owner}': output '{name}' of shape {list(array.shape)} "
                    f"cannot be reshaped to the config's {list(target)}"
                )
        return result

    def close(self) -> None:
        self.inner.close()


class _ReshapingSender:
    """A decoupled request's sender whose responses are reshaped back to the config dims."""

    def __init__(self, inner: ResponseSender, owner: ReshapedInstance) -> None:
        self._inner = inner
        self._owner = owner

    def send(self, outputs: Mapping[str, Any] | BaseException | None, *, final: bool) -> None:
        if outputs is not None and not isinstance(outputs, BaseException):
            outputs = self._owner._reshape_outputs(outputs)
        self._inner.send(outputs, final=final)

    def is_cancelled(self) -> bool:
        return self._inner.is_cancelled()


def _maybe_async(mode: ExecuteMode, results: list[Any]) -> Any:
    if mode != "async":
        return results

    async def done() -> list[Any]:
        return results

    return done()
