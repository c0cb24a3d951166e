"""The other processes of one server: what a :class:`~.server.Server` asks of them when it
runs as one worker process among several (``dagserve serve --workers N``, :mod:`dagserve.workers`).

Each worker process loads the same repository and serves its own share of the connections.
What a client expects to be one answer for the whole server is gathered from all of them:
statistics are summed here (:func:`merge_statistics`); a load or unload is done by every
process. The engine only knows the small protocol below; the transport (a Unix socket per
process) lives in :mod:`dagserve.workers`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, MutableSequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
from anyio.abc import TaskStatus

from ..backends import RUNTIME_BACKENDS
from ..errors import ConfigError, ModelNotFoundError, ModelNotReadyError
from ..repository.config import InstanceKind, ModelConfig
from ..types import InferRequest, InferResponse

if TYPE_CHECKING:
    from ..backends.base import Outputs

__all__ = ["OWNER", "ForwardRunner", "PeerLostError", "PeerUnreachableError", "Peers", "Spread", "merge_statistics", "placement"]

OWNER = 0
"""The worker process that serves the models placed ``one`` (and the only one that loads them)."""

Placement = Literal["replicate", "one"]
Emit = Callable[[Mapping[str, Any] | None, bool], None]
"""How a forwarded stream hands over each response: ``emit(outputs, final)``."""


class Peers(Protocol):
    """The server's other worker processes."""

    index: int
    """This process's number among the workers (:data:`OWNER` serves the models placed ``one``)."""

    loads: MutableSequence[int] | None
    """Requests each worker is running now, one slot per worker in memory they all share
    (:class:`Spread`); each worker writes its own slot only. None: not shared."""

    async def call(self, op: str, **args: Any) -> list[Any]:
        """Have every other process do ``op`` (``statistics``, ``metrics``, ``load``,
        ``unload``, ``loaded``, ``log_settings``, ``trace_setting``) with ``args``; their answers, in process order. A process that is not
        running (being restarted) is left out. A process that fails the op raises the same
        :class:`~dagserve.errors.DagserveError` here."""
        ...

    async def forward(
        self, owner: int, model: str, version: str, request: InferRequest, emit: Emit | None = None
    ) -> InferResponse | None:
        """Have worker ``owner`` answer ``request`` for ``model`` (every output); its error
        is raised here. With ``emit`` (a decoupled model), ``emit(outputs, final)`` for each
        response of the stream, up to the final one (whose outputs may be None), and None is
        returned. Cancelling the call cancels the request in ``owner``.

        Raises:
            PeerUnreachableError: ``owner`` cannot be reached (the request was not sent).
            PeerLostError: ``owner`` closed the connection before answering.
        """
        ...

    async def others_stopped(self) -> None:
        """Return once every other worker process has stopped (its requests answered)."""
        ...


def placement(config: ModelConfig, name: str) -> Placement:
    """Where a model runs when the server has several worker processes: ``replicate`` (in
    every worker) or ``one`` (in worker :data:`OWNER` only, the others forward their requests
    there), from the config's ``placement`` parameter, which wins when given.

    Without it, the default is ``one`` for what replication would multiply but not speed up:

    * a **sequence batcher**: its sequences' state must be in one process;
    * a ``KIND_GPU`` **instance group**: loaded on the GPU once, not once per worker;
    * a **framework backend** (:data:`~dagserve.backends.RUNTIME_BACKENDS`: PyTorch, ONNX
      Runtime, TensorRT, FIL): N copies of the weights, and N runtimes each sizing its
      intra-op thread pool to every core, would oversubscribe the cores the one copy already
      uses (the runtime releases the GIL, so one process runs it on all of them).

    Everything else is ``replicate``: Python models (their code holds the GIL, so only
    processes spread it over the cores), scikit-learn and remote models. Pipelines and their
    function steps are not placed: every worker runs them, and each step reaches its model
    where that model is placed.

    Raises:
        ConfigError: another value, or ``replicate`` for a sequence-batched model.
    """
    value = config.parameters.get("placement")
    sequence = config.sequence_batching is not None
    if value is None:
        gpu = any(group.kind is InstanceKind.KIND_GPU for group in config.instance_group)
        runtime = config.backend_name in RUNTIME_BACKENDS
        return "one" if sequence or gpu or runtime else "replicate"
    if value not in ("replicate", "one"):
        raise ConfigError(f"model '{name}': parameter 'placement' must be 'replicate' or 'one', not {value!r}")
    if value == "replicate" and sequence:
        raise ConfigError(
            f"model '{name}': parameter 'placement' is 'replicate', but the model uses the sequence batcher, whose "
            "state must be in one process: use 'one' (the default for it) or remove the parameter"
        )
    return "one" if value == "one" else "replicate"


class PeerUnreachableError(ModelNotReadyError):
    """A worker process could not be reached, so the request was never sent to it (it is
    being started again, or stopping)."""


class PeerLostError(ModelNotReadyError):
    """A worker process closed the connection before answering a request sent to it (it
    died, most likely): the request may have run there."""


_FORWARDED = contextvars.ContextVar("dagserve_forwarded", default=False)


class Spread:
    """Evens out the work of the worker processes (``--workers N``) for replicated models.

    The kernel gives each connection to one worker, and a client that multiplexes many calls
    over one connection (a gRPC channel: perf_analyzer's, tritonclient's) would keep one worker
    busy while the others idle. A worker that runs at least :data:`MARGIN` requests, and
    that many more than twice the least busy other one's, hands a new request to it whole (a
    pipeline with its steps) over the forwarding socket, as placement ``one`` does. Only
    requests that came from a client are handed on: a pipeline's steps, and a request another
    worker handed here, run here.
    """

    MARGIN = 2
    """How many requests this worker must be running, beyond twice a peer's, before it hands
    one on: below that, the forwarding costs more than the wait it saves."""

    def __init__(self, peers: Peers) -> None:
        assert peers.loads is not None
        self._peers = peers
        self._loads = loads = peers.loads
        self._index = peers.index
        self._sent = [0] * len(loads)  # handed to each worker by this one, not yet answered
        loads[self._index] = 0  # a restarted worker's slot held its predecessor's count

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count a request run by this worker, and mark what runs inside it (its steps) as
        not to be handed on."""
        token = _FORWARDED.set(True)
        self._loads[self._index] += 1
        try:
            yield
        finally:
            self._loads[self._index] -= 1
            _FORWARDED.reset(token)

    def peer(self) -> int | None:
        """The worker to hand the current request to, or None to run it here."""
        loads = self._loads
        here = loads[self._index]
        if here < self.MARGIN:
            return None
        # Only to a peer running less than half as much: between workers that are about as
        # busy (connections the kernel spread evenly), handing on costs more than it evens out.
        best, least = None, (here - self.MARGIN) // 2 + 1
        for index, load in enumerate(loads):
            # A peer's own count lags behind what this worker has just sent it.
            load = max(load, self._sent[index])
            if index != self._index and load < least:
                best, least = index, load
        return best

    async def submit(self, runner: Any, model: str, version: str, request: InferRequest, batch_size: int) -> Outputs:
        """Run ``request`` through ``runner`` here, or on a less busy worker."""
        if _FORWARDED.get():  # a step of a request counted already, or a request handed here
            return await runner.submit(request, batch_size)  # type: ignore[no-any-return]
        peer = self.peer()
        if peer is not None:
            self._sent[peer] += 1
            try:
                response = await self._peers.forward(peer, model, version, _all_outputs(request))
            except PeerLostError:
                raise  # it may have run there: not again here
            except (PeerUnreachableError, ModelNotFoundError, ModelNotReadyError):
                pass  # refused there, unrun (a worker restarting, stopping or still loading): run it here
            else:
                assert response is not None
                return response.outputs
            finally:
                self._sent[peer] -= 1
        with self.running():
            return await runner.submit(request, batch_size)  # type: ignore[no-any-return]


class ForwardRunner:
    """The runner of a model version another worker serves (placement ``one``): each
    validated request goes there whole and is answered there — its batching, sequence state,
    statistics and cache — and the outputs come back to be checked and shaped here."""

    def __init__(self, peers: Peers, model: str, version: str) -> None:
        self._peers = peers
        self._model = model
        self._version = version

    async def submit(self, request: InferRequest, batch_size: int) -> Outputs:
        # Every output comes back: what the client asked of them (a subset, classification)
        # is applied here, where the response is made.
        forwarded = _all_outputs(request)
        sender = request.sender
        if sender is not None:  # a decoupled model: its responses go to the request's sender
            await self._peers.forward(OWNER, self._model, self._version, replace(forwarded, sender=None),
                                      lambda outputs, final: sender.send(outputs, final=final))
            return {}
        response = await self._peers.forward(OWNER, self._model, self._version, forwarded)
        assert response is not None
        return response.outputs

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()


def _all_outputs(request: InferRequest) -> InferRequest:
    return request if request.outputs is None else replace(request, outputs=None)


# Keys whose values are not added up across processes.
_LATEST = frozenset({"last_inference"})
_KEYED_LISTS = {"batch_stats": "batch_size", "model_stats": None}


def merge_statistics(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One statistics answer (Triton's ``model_stats`` JSON) from each process's: counts and
    durations summed, ``last_inference`` the latest, batch statistics summed per batch size.
    A model (version) one process lacks counts as zero there."""
    merged: dict[str, Any] = {"model_stats": []}
    for answer in answers:
        merged = _merge(merged, answer)
    return merged


def _merge(a: Any, b: Any, key: str = "") -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v, k) if k in out else v
        return out
    if isinstance(a, list) and isinstance(b, list) and key in _KEYED_LISTS:
        by_key: dict[Any, Any] = {}
        for item in (*a, *b):
            ident = _identity(item, _KEYED_LISTS[key])
            by_key[ident] = _merge(by_key[ident], item) if ident in by_key else item
        return list(by_key.values())
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a if a not in ("", [], None) else b  # names, versions, lists of records
    return max(a, b) if key in _LATEST else a + b


def _identity(item: dict[str, Any], field: str | None) -> Any:
    return item.get(field) if field is not None else (item.get("name"), item.get("version"))
