"""``backend: remote``: a model served by another KServe v2 server (dagserve, Triton, MLServer).

A remote model is a model like any other to the engine (it has inputs, outputs, statistics, a
scheduler) and a pipeline step like any other; its one instance forwards each request to one
of the configured endpoints and returns what that server answered.

Configuration (``remote:`` in config.yaml, or the same keys as Triton ``parameters``, the URLs
comma-separated): see :class:`~dagserve.repository.config.RemoteConfig`.

Contracts:

* **Load** reads the remote model's metadata (gRPC ``ModelMetadata`` or HTTP
  ``GET /v2/models/<m>``) from every endpoint it can reach and checks that each declared input
  and output exists there with the same datatype and a compatible shape; a mismatch fails the
  load with a ConfigError naming the file, the model, the tensor, what the config expects and
  what the remote has. An endpoint that cannot be reached does not fail the load: the model is
  loaded but not ready (its reason names the endpoints and why), and :meth:`RemoteInstance.watch`
  re-checks unreachable endpoints every ``health_interval_ms`` in the model's task group. An
  endpoint that lets a call time out is checked at once (a pulled cable or a frozen server
  looks connected until asked): no answer within ``connect_timeout_ms`` makes it unreachable.
* **Requests** go round robin to the endpoints currently reachable. A failure before the
  request was sent (connection refused, connect timeout) marks that endpoint unreachable and
  tries the next one, up to ``retries`` more times; a failure after it was sent is never retried
  (the remote may have run it). The request id, the remaining deadline (as Triton's ``timeout``
  parameter, in µs, and as the call's own timeout) and a ``traceparent`` request parameter are
  forwarded. ``execute`` runs on the event loop in the caller's task (mode ``async``), so
  cancelling the caller cancels the remote call (the HTTP connection is closed; the gRPC call
  is cancelled), and the remote server cancels its request.
* **Errors**: unreachable → ModelNotReadyError (503 / UNAVAILABLE) naming the model and the
  endpoint; over ``timeout_ms`` or the request's deadline → RequestTimeoutError (504 /
  DEADLINE_EXCEEDED); the remote's 4xx (or INVALID_ARGUMENT, NOT_FOUND) → InvalidInputError
  (400) with the remote's message; the remote's other failures → ModelExecutionError (500) with
  its message.

The clients (HTTP over httpx, a runtime dependency for its connection pooling with limits and
its cancellation through anyio; gRPC over grpc.aio with dagserve's own generated protos) live
in :mod:`.remote_client`.
"""

from __future__ import annotations

import builtins
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ..errors import (
    ConfigError,
    DagserveError,
    ModelExecutionError,
    ModelNotReadyError,
    RequestTimeoutError,
)
from ..repository.config import ModelConfig, RemoteConfig
from ..types import InferRequest, TensorSpec
from .base import ModelContext, Outputs
from .remote_client import Unreachable, client_for

__all__ = ["RemoteInstance", "load", "remote_config"]

log = logging.getLogger("dagserve.backends")

_PARAMETER_KEYS = set(RemoteConfig.model_fields)


def remote_config(config: ModelConfig, owner: str) -> RemoteConfig:
    """The model's remote settings: its ``remote:`` section, else its ``parameters``.

    Raises:
        ConfigError: neither gives a ``url``, or a value is invalid (naming the field).
    """
    from pydantic import ValidationError

    if config.remote is not None:
        return config.remote
    data = {k: v for k, v in config.parameters.items() if k in _PARAMETER_KEYS}
    if "url" not in data:
        raise ConfigError(
            f"{owner}: backend remote needs a 'remote:' section with url (http://host:port or "
            "grpc://host:port) and model_name, or the same keys as parameters"
        )
    try:
        return RemoteConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"parameter {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{owner}: {problems}") from None


@dataclass(eq=False)
class _Endpoint:
    url: str
    client: Any  # _HttpClient | _GrpcClient
    reason: str = "not checked yet"  # "" = reachable and its metadata matched
    suspect: bool = False  # a call to it timed out: probe it now (see RemoteInstance.watch)

    @property
    def healthy(self) -> bool:
        return not self.reason


class RemoteInstance:
    """The instance of a remote model: its endpoints, their health, and the calls."""

    mode = "async"

    def __init__(self, context: ModelContext, settings: RemoteConfig) -> None:
        self._settings = settings
        self._run_sync = context.run_sync
        self._owner = f"remote model '{context.name}'"
        self._file = _config_file(context)
        self._remote_name = settings.model_name or context.name
        self._inputs = context.config.input_specs()
        self._outputs = context.config.output_specs()
        self._batching = context.config.batching
        self.concurrency = settings.max_connections
        self._endpoints = [_Endpoint(url, client_for(url, settings)) for url in settings.url]
        self._next = 0
        self._mismatch = ""  # a metadata mismatch found after the load: never ready then
        self._wake: anyio.Event | None = None  # set: watch() probes the suspect endpoints now
        self.round_trips: dict[str, dict[str, float]] = {
            e.url: {"count": 0, "ns": 0, "failures": 0} for e in self._endpoints
        }

    # -- health -----------------------------------------------------------------------------
    def not_ready_reason(self) -> str:
        """"" when an endpoint is reachable (and its metadata matched), else why not."""
        if self._mismatch:
            return self._mismatch
        if any(e.healthy for e in self._endpoints):
            return ""
        return f"{self._owner}: no endpoint is reachable: " + "; ".join(f"{e.url}: {e.reason}" for e in self._endpoints)

    async def check_all(self) -> None:
        """Check every endpoint now (the load does this once).

        Raises:
            ConfigError: a reachable remote's metadata disagrees with the config.
        """
        for endpoint in self._endpoints:
            await self._check(endpoint)

    async def watch(self) -> None:
        """Re-check unreachable endpoints every ``health_interval_ms``, until cancelled; and at
        once, an endpoint that let a call time out (:meth:`_suspect`): a dead link or a frozen
        server looks like a connected one until something asks it. If it does not answer a
        readiness check within ``connect_timeout_ms`` it is unreachable from then on — requests
        fail at once with UNAVAILABLE, or go to the other endpoints — until a re-check passes.
        A server that is only slow answers the check and stays in use."""
        interval = self._settings.health_interval_ms / 1000
        self._wake = anyio.Event()
        while True:
            with anyio.move_on_after(interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            for endpoint in self._endpoints:
                if self._mismatch or (endpoint.healthy and not endpoint.suspect):
                    continue
                was_healthy, endpoint.suspect = endpoint.healthy, False
                try:
                    await self._check(endpoint)
                except ConfigError as exc:
                    self._mismatch = str(exc)
                    log.error("%s", exc)
                if endpoint.healthy and not was_healthy:
                    log.info("%s: endpoint %s is reachable again", self._owner, endpoint.url)
                elif was_healthy and not endpoint.healthy:
                    log.warning("%s: endpoint %s let a call time out and does not answer a readiness check: "
                                "unreachable until a re-check passes (%s)", self._owner, endpoint.url, endpoint.reason)

    def _suspect(self, endpoint: _Endpoint) -> None:
        endpoint.suspect = True
        if self._wake is not None:
            self._wake.set()

    async def _check(self, endpoint: _Endpoint) -> None:
        connect = self._settings.connect_timeout_ms / 1000
        try:
            with anyio.fail_after(connect * 2):
                metadata = await endpoint.client.metadata(self._remote_name, self._settings.model_version, connect)
        except (Unreachable, builtins.TimeoutError, DagserveError) as exc:
            endpoint.reason = str(exc) or "no answer within the connect timeout"
            return
        self._compare(endpoint.url, metadata)
        endpoint.reason = ""

    def _compare(self, url: str, metadata: Mapping[str, Any]) -> None:
        where = f"{self._file}: {self._owner} (remote '{self._remote_name}' at {url})"
        for kind, specs in (("input", self._inputs), ("output", self._outputs)):
            remote = {t["name"]: t for t in metadata.get(f"{kind}s", ())}
            for name, spec in specs.items():
                expected = f"{spec.datatype.value} {list(spec.full_shape(self._batching))}"
                found = remote.get(name)
                if found is None:
                    have = ", ".join(remote) or "none"
                    raise ConfigError(f"{where}: {kind} '{name}': expected {expected}, the remote has no such {kind} "
                                      f"(its {kind}s: {have})")
                shape = [int(d) for d in found.get("shape", ())]
                if found.get("datatype") != spec.datatype.value or not _shape_fits(spec, shape, self._batching):
                    raise ConfigError(f"{where}: {kind} '{name}': expected {expected}, remote has "
                                      f"{found.get('datatype')} {shape}")
            if kind == "input":
                extra = [n for n in remote if n not in specs]
                if extra:
                    raise ConfigError(f"{where}: the remote has input(s) {', '.join(extra)} that the config does "
                                      "not declare")

    # -- requests ---------------------------------------------------------------------------
    async def execute(self, requests: Sequence[InferRequest]) -> list[Outputs | BaseException]:
        """Forward each request (those of a batch concurrently); one result or error per
        request, in order. Cancelling the caller cancels every call in flight."""
        results: list[Outputs | BaseException] = [ModelExecutionError(f"{self._owner}: no answer")] * len(requests)

        async def one(i: int, request: InferRequest) -> None:
            try:
                results[i] = await self._forward(request)
            except DagserveError as exc:
                results[i] = exc

        if len(requests) == 1:
            await one(0, requests[0])
            return results
        async with anyio.create_task_group() as tg:
            for i, request in enumerate(requests):
                tg.start_soon(one, i, request)
        return results

    async def _forward(self, request: InferRequest) -> Outputs:
        settings = self._settings
        deadline = anyio.current_effective_deadline()
        if settings.timeout_ms:
            deadline = min(deadline, anyio.current_time() + settings.timeout_ms / 1000)
        tried: list[str] = []
        for _ in range(settings.retries + 1):
            endpoint = self._pick()
            if endpoint is None:
                break
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise RequestTimeoutError(f"{self._owner}: the request's deadline passed before it was sent")
            start = time.perf_counter_ns()
            stats = self.round_trips[endpoint.url]
            try:
                with anyio.fail_after(remaining if math.isfinite(remaining) else None):
                    outputs = await endpoint.client.infer(
                        self._remote_name, settings.model_version, request, self._wanted(request),
                        None if math.isinf(remaining) else remaining,
                    )
            except Unreachable as exc:
                endpoint.reason = str(exc)
                stats["failures"] += 1
                tried.append(f"{endpoint.url} ({exc})")
                log.warning("%s: endpoint %s unreachable: %s", self._owner, endpoint.url, exc)
                continue
            except (builtins.TimeoutError, RequestTimeoutError) as exc:
                stats["failures"] += 1
                if isinstance(exc, RequestTimeoutError) and not _past(deadline):
                    raise RequestTimeoutError(f"{self._owner}: {exc}") from None  # the remote's own 504
                self._suspect(endpoint)
                limit = f"{settings.timeout_ms} ms" if settings.timeout_ms else "the request's deadline"
                raise RequestTimeoutError(f"{self._owner}: {endpoint.url} did not answer within {limit}") from None
            except DagserveError as exc:
                stats["failures"] += 1
                raise type(exc)(f"{self._owner}: {exc}") from None
            stats["count"] += 1
            stats["ns"] += time.perf_counter_ns() - start
            return outputs
        if not tried:
            raise ModelNotReadyError(self.not_ready_reason() or f"{self._owner}: no endpoint is reachable")
        raise ModelNotReadyError(f"{self._owner}: endpoint unreachable: {'; '.join(tried)}")

    def _pick(self) -> _Endpoint | None:
        n = len(self._endpoints)
        for i in range(n):
            endpoint = self._endpoints[(self._next + i) % n]
            if endpoint.healthy:
                self._next = (self._next + i + 1) % n
                return endpoint
        return None

    def _wanted(self, request: InferRequest) -> tuple[str, ...]:
        return request.output_names() or tuple(self._outputs)

    def endpoint_statistics(self) -> dict[str, dict[str, float]]:
        """Round trips per endpoint: ``count`` (successes), ``ns`` (their total time), ``failures``."""
        return {url: dict(s) for url, s in self.round_trips.items()}

    def close(self) -> None:
        """Close every endpoint's connections (on the server's event loop; blocking)."""
        if self._run_sync is None:
            return
        try:
            self._run_sync(self._aclose)
        except Exception:  # the loop may be stopping; the connections die with it
            log.warning("%s: closing the connections failed", self._owner, exc_info=True)

    async def _aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for endpoint in self._endpoints:
                await endpoint.client.aclose()


def load(context: ModelContext) -> RemoteInstance:
    """Create the instance and check the remote's metadata (see the module's contract).

    Raises:
        ConfigError: bad settings, or a reachable remote whose metadata disagrees.
    """
    owner = f"remote model '{context.name}'"
    settings = remote_config(context.config, owner)
    if context.run_sync is None:
        raise ConfigError(f"{owner}: needs the server's event loop to load")
    instance = RemoteInstance(context, settings)
    try:
        context.run_sync(instance.check_all)
    except BaseException:
        instance.close()
        raise
    why = instance.not_ready_reason()
    if why:
        log.warning("%s is loaded but not ready: %s (re-checked every %d ms)", owner, why, settings.health_interval_ms)
    return instance


def _past(deadline: float) -> bool:
    return anyio.current_time() >= deadline - 0.001


def _config_file(context: ModelContext) -> str:
    for name in ("config.yaml", "config.yml", "config.pbtxt"):
        if (context.model_dir / name).is_file():
            return str(context.model_dir / name)
    return str(context.model_dir)


def _shape_fits(spec: TensorSpec, remote: list[int], batching: bool) -> bool:
    local = spec.full_shape(batching)
    if len(local) != len(remote):
        return False
    return all(r == -1 or r == d for d, r in zip(local, remote, strict=True))
