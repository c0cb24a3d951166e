"""Calling models and pipelines from a native Python model: the async BLS API.

A native model gets its :class:`~dagserve.backends.base.ModelContext` in ``Model(context)``;
:func:`call_model` turns that context's engine-level callback into a call over plain dicts of
numpy arrays, raising on error (no response objects to unwrap, unlike ``pb_utils``)::

    import anyio, dagserve

    class Model:
        def __init__(self, context):
            self.context = context

        async def infer(self, inputs):
            a = await dagserve.call_model(self.context, "embed", {"TEXT": inputs["TEXT"]})
            return {"EMB": a["EMB"]}

Calls are ordinary requests to the target: concurrent calls (``asyncio.gather`` or an anyio
task group) queue together and are batched by the target's dynamic batcher. Use
:func:`call_model_sync` from a model whose plain ``infer`` runs in a worker thread (config
parameter ``execution: thread``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..backends.base import ModelContext
from ..errors import UnsupportedError
from ..types import InferRequest, Parameters, RequestedOutput

__all__ = ["call_model", "call_model_sync"]


async def call_model(
    context: ModelContext,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: int | str = "",
    outputs: Sequence[str] | None = None,
    parameters: Parameters | None = None,
    request_id: str = "",
) -> dict[str, np.ndarray]:
    """Run ``inputs`` on ``model`` (or a pipeline) and return its outputs (all, or ``outputs``).

    Must be awaited on the server's event loop (from an ``async def infer``).

    Raises:
        DagserveError: whatever the target raised (unknown model, bad input, its failure),
            with its class and message.
        UnsupportedError: the context cannot call other models (built outside a server).
    """
    if context.infer is None:
        raise UnsupportedError(f"model '{context.name}': this context cannot call other models")
    request = InferRequest(
        inputs=dict(inputs),
        id=request_id,
        parameters=dict(parameters or {}),
        outputs=None if outputs is None else tuple(RequestedOutput(name=n) for n in outputs),
    )
    response = await context.infer(model, "" if version in ("", -1) else str(version), request)
    return dict(response.outputs)


def call_model_sync(
    context: ModelContext, model: str, inputs: Mapping[str, np.ndarray], **kwargs: Any
) -> dict[str, np.ndarray]:
    """:func:`call_model` for a model whose code runs in a worker thread: blocks until the answer.

    Raises:
        DagserveError: as :func:`call_model`.
        UnsupportedError: not called from one of the server's worker threads (e.g. from code
            running on the event loop, which would deadlock waiting for itself).
    """
    if context.run_sync is None:
        raise UnsupportedError(f"model '{context.name}': this context cannot call other models synchronously")
    try:
        result: dict[str, np.ndarray] = context.run_sync(_call, context, model, inputs, kwargs)
    except RuntimeError as exc:
        if "worker thread" not in str(exc):
            raise
        raise UnsupportedError(
            f"model '{context.name}': call_model_sync needs the model to run in a worker thread "
            "(set the config parameter execution: thread), or use 'await dagserve.call_model(...)'"
        ) from None
    return result


async def _call(
    context: ModelContext, model: str, inputs: Mapping[str, np.ndarray], kwargs: dict[str, Any]
) -> dict[str, np.ndarray]:
    return await call_model(context, model, inputs, **kwargs)
