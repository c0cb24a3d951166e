"""The server core: the registry of served models, their lifecycle, and the one ``infer`` entry.

A :class:`Server` is an async context manager that owns a task group; every model version's
lifecycle task and scheduler lives in it, so leaving the context unloads every model, drains
what is in flight, and leaves no task behind::

    async with Server("models") as server:      # or Server(ServerOptions(model_repository=...))
        response = await server.infer("add_sub", "", request)

Models and pipelines can also be added from Python objects (:meth:`Server.add_model`).

Frontends call only this class; it knows nothing of HTTP or gRPC.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from .._version import __version__
from ..backends import complete_config, get_backend
from ..backends.base import Backend, ModelInstance, instance_contexts
from ..backends.objects import ObjectBackend
from ..custom_metrics import CustomMetrics
from ..errors import (
    AlreadyExistsError,
    ConfigError,
    DagserveError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedError,
)
from ..limits import Limits
from ..repository import confine
from ..repository.config import ModelConfig
from ..repository.labels import load_labels
from ..repository.loader import (
    ModelSource,
    fingerprint,
    materialize_override,
    override_files,
    parse_json_config,
    read_model,
    scan,
    validate,
)
from ..repository.locations import did_you_mean
from ..tracing import TraceConfig, Tracing
from ..types import InferRequest, InferResponse
from .aliases import check_aliases
from .cache import ResponseCache
from .latency import MetricsConfig
from .model import ModelState, ModelVersion
from .peers import OWNER, ForwardRunner, Peers, Spread, merge_statistics, placement
from .registry import ModelEntry, is_pipeline, pipeline_members, repository_fingerprints, with_members
from .stats import ModelStatistics
from .warmup import warm_up

if TYPE_CHECKING:
    from ..dsl.builder import Pipeline
    from ..dsl.spec import PipelineSpec
    from .poll import Changes

__all__ = ["Server", "ServerOptions"]

log = logging.getLogger("dagserve.engine")

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "parameters",
    "system_shared_memory",  # served by the frontends (dagserve/shared_memory.py)
    "cuda_shared_memory",  # the endpoints answer; registering needs GPUs (refused: UNSUPPORTED)
    "logging",
    "trace",
)


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """What the server serves and how models are managed (Triton's flag names).

    ``model_control_mode``: ``none`` loads every model at start and refuses load/unload;
    ``explicit`` loads only ``load_models`` (``"*"`` for all; a pipeline with the models it
    calls) and allows load/unload; ``poll`` loads every model and then applies what changes in
    the repository every ``repository_poll_secs`` seconds, refusing load/unload as Triton does.
    ``strict_readiness``: the server is ready only when every model is.
    ``response_cache_bytes``: size of the response cache shared by models that enable it
    (0 = no cache, as Triton without ``--cache-config``).
    ``allow_symlinks_outside_repository``: follow symlinks in model directories that lead out
    of the repository (refused by default; see ``repository/confine.py``).
    ``limits``: what one request may make the frontends allocate (``dagserve/limits.py``).
    ``auto_complete_config``: let backends complete configs from the models (Python
    ``auto_complete_config``, ONNX graphs); False is Triton's ``--disable-auto-complete-config``.
    ``trace``: tracing at start-up (Triton's ``--trace-config``; docs/tracing.md); the
    settings then change at run time through :attr:`Server.tracing`.
    ``metrics_config``: which latency distributions are kept (Triton's ``--metrics-config``).
    ``model_aliases``: served names -> model names (``--model-alias``): a request, metadata,
    readiness or statistics call for a served name answers as the model does (see
    :func:`dagserve.engine.aliases.parse_aliases`); a model of that name, if any, wins.
    ``python_execution``: where sync Python models that set no ``execution`` parameter run:
    ``thread`` (each instance's own worker thread) or ``inline`` (the event loop; the
    operator's opt-in for short, never-blocking steps, see docs/performance.md).
    """

    model_repository: Path | None = None
    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    load_models: tuple[str, ...] = ()
    repository_poll_secs: float = 15.0
    strict_readiness: bool = True
    response_cache_bytes: int = 0
    allow_symlinks_outside_repository: bool = False
    limits: Limits = field(default_factory=Limits)
    auto_complete_config: bool = True  # False: --disable-auto-complete-config
    trace: TraceConfig = field(default_factory=TraceConfig)
    metrics_config: MetricsConfig = field(default_factory=MetricsConfig)
    model_aliases: Mapping[str, str] = field(default_factory=dict)
    python_execution: Literal["thread", "inline"] = "thread"  # --python-execution
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.model_repository, str):  # a str is accepted where a Path is meant
            object.__setattr__(self, "model_repository", Path(self.model_repository))
        if self.model_aliases:
            object.__setattr__(self, "model_aliases", check_aliases(self.model_aliases))


OTHERS_STOP_LIMIT = 300.0
"""Seconds worker 0 keeps its models for the other workers' drain (``--workers N``)."""


class Server:
    """Serves the models of one repository; see the module docstring for the lifecycle."""

    name = "dagserve"
    version = __version__
    extensions = EXTENSIONS

    def __init__(self, options: ServerOptions | str | Path | None = None, **kwargs: Any) -> None:
        """``Server(options)``, ``Server("models", **fields)`` (a repository path and other
        :class:`ServerOptions` fields), ``Server(**fields)``, or ``Server()`` (no repository:
        models come from :meth:`add_model`). Nothing loads until the context is entered.

        Raises:
            TypeError: options of another type, or fields beside a ServerOptions.
        """
        if isinstance(options, (str, Path)):
            options = ServerOptions(model_repository=Path(options), **kwargs)
        elif options is None:
            options = ServerOptions(**kwargs)
        elif not isinstance(options, ServerOptions):
            raise TypeError(f"Server() takes ServerOptions or a repository path, not {type(options).__name__}")
        elif kwargs:
            raise TypeError(f"Server() takes ServerOptions or fields, not both (got {', '.join(sorted(kwargs))})")
        self.options = options
        self._models: dict[str, ModelEntry] = {}
        self._tg: TaskGroup | None = None
        self._started = False
        self._stopping = False
        self._locks: dict[str, anyio.Lock] = {}  # one per model name: its loads and unloads
        self._override_root: Path | None = None
        self._poll_scope: anyio.CancelScope | None = None
        self._draining = False
        size = self.options.response_cache_bytes
        self.cache = ResponseCache(size) if size > 0 else None
        self.tracing = Tracing(self.options.trace)
        """The trace settings (Triton's trace extension) and the exporter behind them."""
        self.custom_metrics = CustomMetrics()
        """The metric families models create (``pb_utils.MetricFamily``), shown on /metrics."""
        self.peers: Peers | None = None
        """The other worker processes of this server (``dagserve serve --workers N``), or None
        when this process is the whole server: set before the context is entered."""
        self.spread: Spread | None = None
        """How this worker hands requests for replicated models to less busy ones (with
        :attr:`peers`)."""

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Server:  # noqa: PYI034 - Server is not meant to be subclassed
        self.tracing.open()
        if self.peers is not None and self.peers.loads is not None:
            self.spread = Spread(self.peers)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._load_initial()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self.tracing.close()
            raise
        self._started = True
        if self.options.model_control_mode == "poll":
            from .poll import poll_repository

            self._poll_scope = await self._tg.start(poll_repository, self, self.options.repository_poll_secs)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._stopping = True
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        if self.peers is not None and self.peers.index == OWNER:
            # The other workers forward to the models placed here: serve them until they
            # have drained too (each is bounded by its own exit timeout).
            with anyio.CancelScope(shield=True), anyio.move_on_after(OTHERS_STOP_LIMIT) as waited:
                await self.peers.others_stopped()
            if waited.cancelled_caught:
                log.warning("other worker processes still run after %gs: unloading the models anyway", OTHERS_STOP_LIMIT)
        for entry in self._models.values():
            for version in entry.versions.values():
                version.unload("server stopping")
        assert self._tg is not None
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.tracing.close)

    async def _load_initial(self) -> None:
        repo = self.options.model_repository
        if repo is None:
            return
        sources = scan(repo)
        if self.options.model_control_mode == "explicit":
            wanted = set(self.options.load_models)
            for name in wanted - {"*"}:  # security: confinement of --load-model names
                try:
                    confine.check_model_name(name, field="--load-model")
                except InvalidInputError as exc:
                    raise ConfigError(str(exc)) from None
            if "*" not in wanted:
                unknown = wanted - set(sources)
                if unknown:
                    named = ", ".join(f"'{n}'{did_you_mean(n, sources)}" for n in sorted(unknown))
                    raise ConfigError(f"--load-model names unknown models: {named}")
                # A pipeline comes with the models it calls, as Triton loads an ensemble's.
                wanted = await with_members(wanted, sources)
                sources = {n: s for n, s in sources.items() if n in wanted}
        await self._load_all(sources.values())

    async def _load_all(self, sources: Iterable[ModelSource]) -> None:
        """Load ``sources`` beside what serves: models concurrently, then pipelines after the
        models they check against, and a pipeline calling other pipelines after those."""
        from .pipeline import load_order

        sources = list(sources)
        models = [s for s in sources if not is_pipeline(s)]
        for group in (models, *load_order(s for s in sources if is_pipeline(s))):
            async with anyio.create_task_group() as tg:
                for source in group:
                    tg.start_soon(self._reload_locked, source)

    async def _reload_locked(self, source: ModelSource) -> None:
        async with self._lock(source.name):
            # Digest first, then read: a change made meanwhile shows at the next comparison.
            digest = await anyio.to_thread.run_sync(fingerprint, source.path)
            source = await anyio.to_thread.run_sync(read_model, source.path)
            await self._reload(self._confined(source), digest)  # security: confinement

    async def _load_source(
        self, source: ModelSource, spec: PipelineSpec | None = None, backend: Backend | None = None
    ) -> None:
        """Register a new entry for ``source`` and load its versions (nothing served it)."""
        entry = ModelEntry(source.name, source)
        self._models[source.name] = entry
        await self._start(entry, spec, backend)
        self._publish(entry, None)

    async def _start(
        self, entry: ModelEntry, spec: PipelineSpec | None = None, backend: Backend | None = None
    ) -> None:
        """Load every version of ``entry`` (registered or not); failures are recorded in the
        versions' state and reason, never raised. ``spec``: a pipeline built in Python;
        ``backend``: the one that loads the instances, when not the config's (in-memory models)."""
        source = entry.source
        assert source is not None
        entry.spec = spec
        if source.config_generated and not self.options.auto_complete_config and not source.error:
            entry.error = (
                f"{source.path}: no config.pbtxt or config.yaml (auto-complete would make one from the "
                f"model file, but --disable-auto-complete-config is set; write a config, or drop the flag)"
            )
        if entry.error or source.config is None:
            log.error("model '%s' cannot load: %s", source.name, entry.error)
            return
        if is_pipeline(source):
            entry.members = frozenset(
                {s.model for s in spec.steps if s.function is None} if spec is not None
                else await pipeline_members(source)
            )
        # Backends that can read the model file (ONNX) fill in what the config leaves out.
        config = source.config
        if self.options.auto_complete_config:
            try:
                config = await anyio.to_thread.run_sync(complete_config, config, source.path, source.versions)
            except DagserveError as exc:
                entry.error = str(exc)
                log.error("model '%s' cannot load: %s", source.name, exc)
                return
        forwarded = False  # --workers N: another worker serves it, this one forwards to it
        if self.peers is not None and not is_pipeline(source):
            try:
                forwarded = placement(config, source.name) == "one" and self.peers.index != OWNER
            except ConfigError as exc:
                entry.error = str(exc)
                log.error("model '%s' cannot load: %s", source.name, exc)
                return
        platform = config.platform or config.backend_name
        labels: Mapping[str, tuple[str, ...]] = {}
        if any(output.label_filename for output in config.output):
            try:
                labels = await anyio.to_thread.run_sync(functools.partial(
                    load_labels, config, source.path, owner=f"model '{source.name}'",
                    allow_symlinks_outside=self.options.allow_symlinks_outside_repository,
                ))
            except DagserveError as exc:
                entry.error = str(exc)
                log.error("model '%s' cannot load: %s", source.name, exc)
                return
        assert self._tg is not None
        for number in source.versions:
            version: ModelVersion
            load: Callable[[], Awaitable[Any]]
            if is_pipeline(source):
                from .pipeline import pipeline_version

                version, load = await pipeline_version(
                    self, source, config, number=number, spec=spec, platform=platform, cache=self.cache,
                    labels=labels,
                    start_functions=functools.partial(self._start_functions, entry, number),
                )
            else:
                version = ModelVersion(
                    name=source.name, version=number, config=config, platform=platform, cache=self.cache,
                    labels=labels,
                    forward=ForwardRunner(self.peers, source.name, str(number)) if forwarded and self.peers else None,
                )
                load = (_nothing_to_load if forwarded
                        else functools.partial(self._load_instances, source, config, number, backend))
            version.stats.configure(
                self.options.metrics_config, cached=version.cached,
                decoupled=version.decoupled,
                buckets=config.model_metrics.buckets if config.model_metrics is not None else None,
            )
            if self.spread is not None and not forwarded and not version.decoupled:
                version.spread = self.spread  # replicated: a busy worker may hand its requests on
            entry.versions[number] = version
            await self._tg.start(version.serve, load)
            entry.started.append(version)

    async def _start_functions(self, entry: ModelEntry, number: int, spec: PipelineSpec) -> dict[str, ModelVersion]:
        """Load version ``number`` of the models serving the function steps of pipeline
        ``entry`` (see :mod:`.functions`); they are the entry's, listed when it is published.

        Raises:
            ConfigError: a step's model name belongs to another model, or its function's
                model failed to load (the reason says why).
        """
        source = entry.source
        assert source is not None and self._tg is not None
        own: dict[str, ModelVersion] = {}
        for step in spec.steps:
            function = step.function
            if function is None:
                continue
            name = step.model
            taken = self._models.get(name)
            where = f"{step.origin}: " if step.origin else ""
            if taken is not None and taken.owner != entry.name:
                raise ConfigError(
                    f"{where}pipeline '{entry.name}', step '{step.name}': its function is served as model "
                    f"'{name}', but a model of that name exists already; rename the step or that model"
                )
            config = function.config(name)
            member = entry.functions.get(name)
            if member is None:
                member = entry.functions[name] = ModelEntry(name, None)
                member.owner = entry.name
            version = ModelVersion(name=name, version=number, config=config, platform="python", cache=self.cache)
            version.stats.configure(self.options.metrics_config, cached=version.cached, decoupled=version.decoupled)
            member.versions[number] = version
            step_source = ModelSource(
                name=name, path=source.path, config=config, config_path=None, versions=(number,)
            )
            load = functools.partial(self._load_instances, step_source, config, number, ObjectBackend(function))
            await self._tg.start(version.serve, load)
            entry.started.append(version)
            if version.state is not ModelState.READY:
                raise ConfigError(
                    f"{where}pipeline '{entry.name}', step '{step.name}': function {function.name} "
                    f"({function.origin}) failed to load: {version.reason}"
                )
            own[name] = version
        return own

    def _publish(self, entry: ModelEntry, old: ModelEntry | None) -> None:
        """List the function models of pipeline ``entry`` (now serving) under their names,
        in place of those of ``old``, the entry it replaced."""
        if old is not None:
            self._unpublish(old)
        for name, member in entry.functions.items():
            self._models[name] = member

    def _unpublish(self, entry: ModelEntry) -> None:
        for name, member in entry.functions.items():
            if self._models.get(name) is member:
                del self._models[name]

    async def _reload(
        self, source: ModelSource, digest: str | None, *, override_dir: Path | None = None,
        spec: PipelineSpec | None = None,
    ) -> str:
        """Serve ``source`` under its name without losing a request; the caller holds the
        name's lock. Returns "" or why the new versions failed.

        When something serves the name, the new versions load beside it; only if every one is
        READY does the registry entry swap (atomically: a request sees the old entry or the
        new one), and then the old versions drain (their requests in flight finish) and close.
        A failed load keeps the old versions serving, records the reason in ``load_error``
        (the repository index shows it), and closes what did load.
        """
        name = source.name
        new = ModelEntry(name, source)
        new.fingerprint, new.override_dir = digest, override_dir
        old = self._models.get(name)
        if old is None or not old.serving():
            # Nothing to keep serving: show the new entry (LOADING) at once.
            self._models[name] = new
            if old is not None:
                self._unpublish(old)
                await self._stop(old, "replaced by a new load")
            await self._start_or_stop(new, spec)
            self._publish(new, None)
            reason = new.reason()
            if reason:
                new.failed_fingerprint = digest
            return reason
        await self._start_or_stop(new, spec)
        reason = new.reason()
        if reason:
            log.error("model '%s': reload failed, the loaded versions keep serving: %s", name, reason)
            old.load_error, old.failed_fingerprint = reason, digest
            if new.override_dir == old.override_dir:
                new.override_dir = None  # still the old versions' files
            await self._stop(new, "reload failed; the versions loaded before keep serving")
            return reason
        self._models[name] = new
        self._publish(new, old)
        log.info("model '%s' reloaded; draining the replaced versions", name)
        if old.override_dir == new.override_dir:
            old.override_dir = None  # the new versions' files now
        await self._stop(old, "replaced by the reloaded versions")
        return ""

    async def _start_or_stop(self, entry: ModelEntry, spec: PipelineSpec | None) -> None:
        """:meth:`_start`; if the caller is cancelled meanwhile (the client went away, the
        server stops), the versions already started are unloaded, so none is left behind in
        the server's task group."""
        try:
            await self._start(entry, spec)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop(entry, "load cancelled")
            raise

    async def _stop(self, entry: ModelEntry, why: str = "") -> None:
        """Unload ``entry``'s versions and those of its function steps (requests in flight
        finish first; ``why`` goes to the log) and remove its override directory."""
        for version in (*entry.versions.values(), *(v for f in entry.functions.values() for v in f.versions.values())):
            version.unload(why)
        for version in entry.started:  # a version whose start was cancelled has no task left
            await version.wait_closed()
        if entry.override_dir is not None:
            await anyio.to_thread.run_sync(functools.partial(shutil.rmtree, entry.override_dir.parent, ignore_errors=True))

    def _lock(self, name: str) -> anyio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = anyio.Lock()
        return lock

    async def _load_instances(
        self, source: ModelSource, config: ModelConfig, number: int, backend: Backend | None = None
    ) -> list[ModelInstance]:
        if backend is None:
            backend = get_backend(config.backend_name)
        contexts = instance_contexts(
            source.name, number, config, source.path,
            infer=self.infer, infer_stream=self.infer_stream,
            # with the loop's token: callable from any thread (an instance's own thread)
            run_sync=functools.partial(anyio.from_thread.run, token=anyio.lowlevel.current_token()),
            control=self,  # pb_utils.load_model / unload_model / is_model_ready
            metrics=self.custom_metrics,
            extras={"python_execution": self.options.python_execution},
        )
        instances = []
        try:
            for ctx in contexts:
                # A load in a thread cannot be stopped: if the caller is cancelled meanwhile,
                # keep the instance it makes so that it is closed below, then stop.
                with anyio.CancelScope(shield=True):
                    instances.append(await anyio.to_thread.run_sync(backend.load, ctx))
                await anyio.lowlevel.checkpoint()
            await warm_up(config, instances, model_dir=source.path, owner=f"model '{source.name}' version {number}")
        except BaseException:
            with anyio.CancelScope(shield=True):
                for instance in instances:
                    await anyio.to_thread.run_sync(instance.close)
            raise
        return instances

    async def add_pipeline(self, spec: PipelineSpec | Pipeline) -> None:
        """Serve a pipeline built in Python (a ``dagserve.Pipeline`` or its built
        :class:`PipelineSpec`) as model ``spec.name``, beside the repository's models; its
        members must be loaded.

        Raises:
            AlreadyExistsError: a model of that name is served.
            ConfigError: the pipeline is invalid; the message names the step and tensor.
        """
        from ..dsl.spec import PipelineSpec
        from .pipeline import pipeline_source

        if not isinstance(spec, PipelineSpec):
            spec = spec.build()
        await self._add(spec.name, pipeline_source(spec), spec=spec)

    async def add_model(
        self, name: str, model: Any, config: ModelConfig | Mapping[str, Any] | None = None, *, version: int = 1
    ) -> None:
        """Serve ``model``, a native Python model made of objects in memory, as ``name``
        (version ``version``) beside the repository's models, until the server stops.

        ``model`` is a class (instantiated once per instance, with the
        :class:`~dagserve.backends.base.ModelContext` when its constructor takes an argument),
        an object with an ``infer`` method, or an ``infer`` function, as a native ``model.py``
        defines them (docs/models.md); ``config`` is a :class:`ModelConfig` or a dict spelled
        as a ``config.yaml`` (``inputs``, ``outputs``, ``max_batch_size``, ...), the backend
        being ``python``. A ``dagserve.Pipeline`` (``config`` None) goes to :meth:`add_pipeline`.
        The model is served as from a repository: validation, batching, statistics, BLS.

        Raises:
            AlreadyExistsError: a model of that name is served.
            ConfigError: a malformed name, an invalid config, or the model failed to load
                (the message says why).
        """
        from ..dsl.builder import Pipeline
        from ..dsl.spec import PipelineSpec

        if isinstance(model, (Pipeline, PipelineSpec)) and config is None:
            spec = model if isinstance(model, PipelineSpec) else model.build()
            if spec.name != name:
                raise ConfigError(f"add_model('{name}'): the pipeline is named '{spec.name}'")
            await self.add_pipeline(spec)
            return
        try:
            confine.check_model_name(name)
        except InvalidInputError as exc:
            raise ConfigError(str(exc)) from None
        where = Path(f"add_model('{name}')")
        if config is None:
            raise ConfigError(f"{where}: a config is needed (inputs and outputs)")
        if not isinstance(config, ModelConfig):
            config = validate(dict(config), path=where)
        if config.name and config.name != name:
            raise ConfigError(f"{where}: field 'name': '{config.name}' does not match the model name '{name}'")
        if config.backend_name not in ("", "python"):
            raise ConfigError(f"{where}: an in-memory model is served by the python backend, not '{config.backend_name}'")
        config = config.model_copy(update={"name": name, "backend": "python"})
        backend = ObjectBackend(model)
        source = ModelSource(name=name, path=where, config=config, config_path=None, versions=(version,))
        await self._add(name, source, backend=backend)

    async def _add(
        self, name: str, source: ModelSource, *, spec: PipelineSpec | None = None, backend: Backend | None = None
    ) -> None:
        """Serve ``source`` (made in Python) as the new model ``name``; a failure leaves nothing."""
        async with self._lock(name):
            if name in self._models:
                raise AlreadyExistsError(f"a model named '{name}' is already served")
            await self._load_source(source, spec, backend)
            reason = self._models[name].reason()
            if reason:
                failed = self._models.pop(name)
                self._unpublish(failed)
                await self._stop(failed, "load failed")
                raise ConfigError(reason)

    def begin_drain(self) -> None:
        """Start a graceful stop: from now on :meth:`is_ready` is false, so load balancers
        send no more traffic, while every request (and any new one, e.g. a BLS call of a
        request in flight) is still served. Idempotent; leaving the context finishes the stop."""
        self._draining = True

    @property
    def draining(self) -> bool:
        """Whether :meth:`begin_drain` was called."""
        return self._draining

    # -- health and metadata ------------------------------------------------------------------
    def is_live(self) -> bool:
        """True from start-up until the models start unloading (still true while draining)."""
        return self._started and not self._stopping

    def is_ready(self) -> bool:
        """Live, not draining, and (with ``strict_readiness``) every model ready."""
        if not self.is_live() or self._draining:
            return False
        if not self.options.strict_readiness:
            return True
        return all(e.versions and all(v.ready for v in e.versions.values()) for e in self._models.values())

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def get_version(self, name: str, version: str = "") -> ModelVersion:
        """The version that serves ``name`` at ``version`` ("" = the newest ready one).

        Raises:
            ModelNotFoundError: unknown model or version.
            ModelNotReadyError: no version of the model is ready.
        """
        entry = self._models.get(name)
        if entry is None and name in self.options.model_aliases:
            return self.get_version(self.options.model_aliases[name], version)
        if entry is None:
            confine.check_model_name(name)  # security: a malformed name is a 400, not a 404
            raise ModelNotFoundError(f"unknown model '{name}'")
        if version:
            try:
                found = entry.versions.get(int(version))
            except ValueError:
                raise InvalidInputError(f"model '{name}': version '{version}' is not a number") from None
            if found is None:
                have = ", ".join(str(v) for v in sorted(entry.versions)) or "none"
                raise ModelNotFoundError(f"model '{name}' has no version {version} (versions: {have})")
            return found
        versions = entry.versions
        if len(versions) == 1:  # the usual case, on every pipeline hop: no sorting
            (only,) = versions.values()
            if only.ready:
                return only
        for number in sorted(versions, reverse=True):
            candidate = versions[number]
            if candidate.ready:
                return candidate
        reason = entry.reason() or "not loaded"
        raise ModelNotReadyError(f"model '{name}' is not ready: {reason}")

    def loaded_version(self, name: str) -> ModelVersion | None:
        """The newest version of ``name`` that is loaded (READY), whether or not it is ready
        now (a remote model whose server cannot be reached is loaded but not ready); ``None``
        when there is none."""
        entry = self._models.get(name)
        if entry is None:
            return None
        loaded = [v for _, v in sorted(entry.versions.items()) if v.state is ModelState.READY]
        return loaded[-1] if loaded else None

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version) is ready. Raises ModelNotFoundError for unknown names."""
        try:
            return self.get_version(name, version).ready
        except ModelNotReadyError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        found = self.get_version(name, version)
        versions = [str(v) for v, mv in sorted(self._models[found.name].versions.items()) if mv.ready]
        return found.metadata(versions)

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The model's config in Triton's JSON shape."""
        found = self.get_version(name, version)
        return found.config.to_triton_json()

    # -- inference -----------------------------------------------------------------------------
    async def infer(self, name: str, version: str, request: InferRequest) -> InferResponse:
        """Run ``request`` on a model (or pipeline).

        Raises:
            DagserveError: a subclass naming what went wrong (unknown model, bad input, model
                not ready, model failure); anything else is a bug in dagserve.
        """
        return await self.get_version(name, version).infer(request)

    async def infer_stream(
        self, name: str, version: str, request: InferRequest, emit: Callable[[InferResponse], Awaitable[None]]
    ) -> None:
        """Run ``request`` and ``await emit(response)`` for each of its responses: one for an
        ordinary model, 0..N then a final one for a decoupled model (see
        :meth:`ModelVersion.infer_stream`).

        Raises:
            DagserveError: as :meth:`infer`.
        """
        await self.get_version(name, version).infer_stream(request, emit)

    # -- statistics and repository -------------------------------------------------------------
    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """Triton's statistics extension JSON for one model (version) or all."""
        if name:
            if name not in self._models:
                name = self.options.model_aliases.get(name, name)
            if version:
                versions = [self.get_version(name, version)]
            elif name in self._models:
                versions = list(self._models[name].versions.values())
            else:
                raise ModelNotFoundError(f"unknown model '{name}'")
        else:
            versions = [v for e in self._models.values() for v in e.versions.values()]
        return {"model_stats": [v.stats.snapshot() for v in versions if v.state is not ModelState.UNLOADED]}

    async def gather_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """:meth:`statistics` for the whole server: with :attr:`peers`, every worker
        process's counts summed (:func:`.peers.merge_statistics`)."""
        local = self.statistics(name, version)
        if self.peers is None:
            return local
        return merge_statistics([local, *await self.peers.call("statistics", name=name, version=version)])

    def statistics_sources(self) -> list[ModelStatistics]:
        """The live statistics of every loaded version, for the metrics endpoint (which also
        reads their latency distributions, absent from :meth:`statistics`)."""
        return [v.stats for e in self._models.values() for v in e.versions.values() if v.state is not ModelState.UNLOADED]

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model of the repository with its state, Triton's index shape."""
        entries: list[dict[str, Any]] = []
        names = set(self._models)
        if self.options.model_repository is not None and not ready_only:
            names |= set(scan(self.options.model_repository))
        for name in sorted(names):
            entry = self._models.get(name)
            if entry is None or not entry.versions:
                if not ready_only:
                    reason = entry.reason() if entry else "unloaded"
                    entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason})
                continue
            for number, v in sorted(entry.versions.items()):
                if ready_only and not v.ready:
                    continue
                # READY but not ready: a pipeline whose member was unloaded.
                state = "UNAVAILABLE" if v.state is ModelState.READY and not v.ready else v.state.triton_name
                reason = v.reason or (f"reload failed, still serving the loaded version: {entry.load_error}"
                                      if entry.load_error and v.ready else "")
                entries.append({"name": name, "version": str(number), "state": state, "reason": reason})
        return entries

    async def load_model(
        self, name: str, parameters: dict[str, Any] | None = None, *, here_only: bool = False
    ) -> None:
        """Load ``name`` from the repository, or reload it without losing a request (see
        :meth:`_reload`); a pipeline loads the models it calls first, recursively. A model whose
        directory is unchanged since it loaded (and that serves) is left as it is, as on Triton.

        ``parameters`` are Triton's: ``config`` (JSON text) replaces the config on disk;
        ``file:<path>`` (base64 text, or bytes over gRPC) with a ``config`` loads the model from
        a directory of exactly those files instead of the repository's.

        Raises:
            UnsupportedError: model control mode ``none`` or ``poll``.
            InvalidInputError: a ``file:`` path that leaves the model directory, content that is
                not base64, or ``file:`` without ``config``.
            ModelNotFoundError: no such model directory (and no override files).
            ConfigError / ModelNotReadyError: the model failed to load (message says why); what
                served before keeps serving.

        With :attr:`peers` (and not ``here_only``), every worker process loads it at once, and
        the first failure is raised.
        """
        self._require_explicit("load")
        if self.peers is not None and not here_only:
            await self._everywhere(self.load_model(name, parameters, here_only=True),
                                   self.peers.call("load", name=name, parameters=parameters))
            return
        confine.check_model_name(name)  # security: confinement
        params = parameters or {}
        override = params.get("config")
        if isinstance(override, bytes):
            override = override.decode("utf-8", errors="replace")
        if override is not None and not isinstance(override, str):
            raise InvalidInputError("load parameter 'config' must be a string of JSON")
        files = override_files(params)
        if files and not override:
            raise InvalidInputError(
                f"load of '{name}': 'file:' parameters need a 'config' parameter too (the files "
                "replace the model directory, so they need a config of their own)"
            )
        if files or override:
            source, override_dir = await self._override_source(name, override or "", files)
            # security: the override's file names (default_model_filename...) stay inside the
            # model directory, the repository's or the one made of the override files.
            root = override_dir.parent if override_dir is not None else self.options.model_repository
            assert root is not None
            confine.check_source(source, root, allow_symlinks_outside=self.options.allow_symlinks_outside_repository)
            async with self._lock(name):
                reason = await self._reload(source, None, override_dir=override_dir)
            if reason:
                raise ModelNotReadyError(f"failed to load '{name}': {reason}")
            return
        await self._load_tree(name, set())

    async def _load_tree(self, name: str, visiting: set[str]) -> None:
        repo = self.options.model_repository
        model_dir = repo / name if repo else None
        if model_dir is None or not model_dir.is_dir():
            raise ModelNotFoundError(f"no model '{name}' in the repository")
        assert repo is not None
        # security: a symlinked model directory leading outside is refused before its config is read
        allow = self.options.allow_symlinks_outside_repository
        confine.inside(repo, Path(name), allow_symlinks_outside=allow, field=f"model '{name}': model directory")
        visiting.add(name)
        before = self._dependents_readiness(name)
        source = await anyio.to_thread.run_sync(read_model, model_dir)
        confine.check_source(source, repo, allow_symlinks_outside=allow)
        if is_pipeline(source):
            for member in sorted(await pipeline_members(source)):
                if member not in visiting and (model_dir.parent / member).is_dir():
                    try:
                        await self._load_tree(member, visiting)
                    except (ModelNotReadyError, ConfigError) as exc:
                        log.error("pipeline '%s': member '%s' did not load: %s", name, member, exc)
        async with self._lock(name):
            digest = await anyio.to_thread.run_sync(fingerprint, model_dir)
            entry = self._models.get(name)
            unchanged = (
                entry is not None and entry.fingerprint == digest and not entry.load_error
                and entry.versions and all(v.ready for v in entry.versions.values())
            )
            if unchanged:
                return
            source = await anyio.to_thread.run_sync(read_model, model_dir)
            confine.check_source(source, repo, allow_symlinks_outside=allow)
            reason = await self._reload(source, digest)
        if reason:
            raise ModelNotReadyError(f"failed to load '{name}': {reason}")
        await self._refresh_dependents(name)
        self._log_readiness_changes(before)

    async def _refresh_dependents(self, name: str) -> None:
        """Re-check and reload (zero-loss) the loaded pipelines that call ``name``: they were
        checked against the member's previous config."""
        for entry in list(self._models.values()):
            if name in entry.members and entry.source is not None and entry.serving():
                async with self._lock(entry.name):
                    current = self._models.get(entry.name)
                    if current is entry:
                        await self._reload(
                            entry.source, entry.fingerprint, override_dir=entry.override_dir, spec=entry.spec
                        )

    async def _override_source(self, name: str, config_text: str, files: dict[str, bytes]) -> tuple[ModelSource, Path | None]:
        """The source for a load with overrides: the repository's directory with the given
        config, or (with files) a fresh directory of those files."""
        config = await anyio.to_thread.run_sync(functools.partial(parse_json_config, config_text, name=name))
        if not files:
            repo = self.options.model_repository
            model_dir = repo / name if repo else None
            if model_dir is None or not model_dir.is_dir():
                raise ModelNotFoundError(f"no model '{name}' in the repository (send 'file:' parameters to create one)")
            return await anyio.to_thread.run_sync(functools.partial(read_model, model_dir, config)), None
        if self._override_root is None:
            self._override_root = Path(tempfile.mkdtemp(prefix="dagserve-overrides-"))
            weakref.finalize(self, shutil.rmtree, self._override_root, ignore_errors=True)
        model_dir = await anyio.to_thread.run_sync(materialize_override, self._override_root, name, files)
        source = await anyio.to_thread.run_sync(functools.partial(read_model, model_dir, config, name=name))
        return source, model_dir

    async def apply_repository_changes(self) -> Changes:
        """Make the served models match the repository on disk (poll mode; see
        :mod:`.poll`): load new models, reload changed ones beside the old versions, unload
        removed ones. Returns what changed."""
        from .poll import diff

        repo = self.options.model_repository
        assert repo is not None
        on_disk = await anyio.to_thread.run_sync(repository_fingerprints, repo)
        served = {
            name: (e.fingerprint, e.failed_fingerprint)
            for name, e in self._models.items() if e.fingerprint is not None
        }
        changes = diff(on_disk, served)
        if not changes:
            return changes
        log.info("model repository changed: added %s, changed %s, removed %s",
                 list(changes.added), list(changes.changed), list(changes.removed))
        sources = await anyio.to_thread.run_sync(
            lambda: [read_model(repo / n) for n in (*changes.added, *changes.changed)]
        )
        await self._load_all(sources)
        for name in changes.changed:
            await self._refresh_dependents(name)
        for name in changes.removed:
            await self._unload(name, "removed from the repository")
        return changes

    async def unload_model(self, name: str, unload_dependents: bool = False, *, here_only: bool = False) -> None:
        """Unload every version of ``name``; requests in flight finish first. With
        ``unload_dependents`` (Triton's parameter), the models a pipeline calls are unloaded
        too, recursively, unless another loaded model still calls them.

        Raises:
            UnsupportedError: model control mode ``none`` or ``poll``.
            ModelNotFoundError: the model is not loaded.

        With :attr:`peers` (and not ``here_only``), every worker process unloads it.
        """
        self._require_explicit("unload")
        if self.peers is not None and not here_only:
            await self._everywhere(self.unload_model(name, unload_dependents, here_only=True),
                                   self.peers.call("unload", name=name, unload_dependents=unload_dependents))
            return
        confine.check_model_name(name)  # security: confinement
        if name not in self._models:
            raise ModelNotFoundError(f"model '{name}' is not loaded")
        owner = self._models[name].owner
        if owner:
            raise UnsupportedError(
                f"model '{name}' serves a function step of pipeline '{owner}' and unloads with it: unload '{owner}'"
            )
        members = await self._unload(name)
        if not unload_dependents:
            return
        pending = list(members)
        while pending:
            member = pending.pop()
            still_used = any(member in e.members for e in self._models.values())
            if member in self._models and not still_used:
                pending.extend(await self._unload(member))

    async def _unload(self, name: str, why: str = "unload requested") -> frozenset[str]:
        """Unload ``name`` (if loaded); returns the models it called (a pipeline's members)."""
        async with self._lock(name):
            entry = self._models.pop(name, None)
            if entry is None:
                return frozenset()
            before = self._dependents_readiness(name)
            self._unpublish(entry)
            await self._stop(entry, why)
            self._log_readiness_changes(before)
            return entry.members

    def _dependents_readiness(self, member: str) -> list[tuple[ModelVersion, bool]]:
        """The READY versions of the pipelines calling ``member``, each with whether it is
        ready now (a pipeline whose member is gone is READY but not ready: UNAVAILABLE)."""
        return [
            (v, v.ready) for e in self._models.values() if member in e.members
            for v in e.versions.values() if v.state is ModelState.READY
        ]

    @staticmethod
    def _log_readiness_changes(before: list[tuple[ModelVersion, bool]]) -> None:
        """One log line per pipeline version whose readiness changed since ``before``."""
        for version, was in before:
            now = version.ready
            if now == was or version.state is not ModelState.READY:
                continue
            old, new = ("UNAVAILABLE", "READY") if now else ("READY", "UNAVAILABLE")
            why = "every step's model is ready again" if now else version.reason
            log.info("model '%s' version %s: %s -> %s: %s", version.name, version.version, old, new, why,
                     extra={"model": version.name, "version": version.version_str, "state": new,
                            "previous_state": old, "reason": why})

    def _confined(self, source: ModelSource) -> ModelSource:
        assert self.options.model_repository is not None
        return confine.confined(
            source, self.options.model_repository,
            allow_symlinks_outside=self.options.allow_symlinks_outside_repository,
        )

    @staticmethod
    async def _everywhere(here: Awaitable[Any], there: Awaitable[Any]) -> None:
        """Run a model-control action in this process and in the peers at once; raise the
        first failure (this process's when both fail) once both have ended."""
        failures: list[BaseException] = []

        async def run(action: Awaitable[Any]) -> None:
            try:
                await action
            except DagserveError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, here)
            tg.start_soon(run, there)
        if failures:
            raise failures[0]

    def _require_explicit(self, action: str) -> None:
        mode = self.options.model_control_mode
        if mode == "poll":
            raise UnsupportedError(
                f"cannot {action} models: explicit model load / unload is not allowed if polling is "
                "enabled (the server runs with --model-control-mode poll; change the repository instead)"
            )
        if mode != "explicit":
            raise UnsupportedError(
                f"cannot {action} models: the server runs with model control mode "
                f"'{mode}' (start it with --model-control-mode explicit)"
            )


async def _nothing_to_load() -> None:
    """The load of a model version another worker process serves (it forwards there)."""
