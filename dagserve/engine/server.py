"""The server core: the registry of served models, their lifecycle, and the one ``infer`` entry.

A :class:`Server` is an async context manager that owns a task group; every model version's
lifecycle task and scheduler lives in it, so leaving the context unloads every model, drains
what is in flight, and leaves no task behind::

    async with Server(ServerOptions(model_repository=Path("models"))) as server:
        response = await server.infer("add_sub", "", request)

Frontends call only this class; it knows nothing of HTTP or gRPC.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
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
from ..backends.base import ModelContext, ModelInstance
from ..errors import (
    AlreadyExistsError,
    ConfigError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedError,
)
from ..repository.config import InstanceKind, ModelConfig
from ..repository.loader import ModelSource, parse_config, read_model, scan
from ..types import InferRequest, InferResponse
from .cache import ResponseCache
from .model import ModelState, ModelVersion
from .warmup import warm_up

if TYPE_CHECKING:
    from ..dsl.spec import PipelineSpec

__all__ = ["Server", "ServerOptions"]

log = logging.getLogger("dagserve.engine")

EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "parameters",
)


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """What the server serves and how models are managed (Triton's flag names).

    ``model_control_mode``: ``none`` loads every model at start and refuses load/unload;
    ``explicit`` loads only ``load_models`` (``"*"`` for all) and allows load/unload.
    ``strict_readiness``: the server is ready only when every model is.
    ``response_cache_bytes``: size of the response cache shared by models that enable it
    (0 = no cache, as Triton without ``--cache-config``).
    """

    model_repository: Path | None = None
    model_control_mode: Literal["none", "explicit"] = "none"
    load_models: tuple[str, ...] = ()
    strict_readiness: bool = True
    response_cache_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Model:
    """Everything the server holds for one model name."""

    __slots__ = ("error", "name", "source", "versions")

    def __init__(self, name: str, source: ModelSource | None) -> None:
        self.name = name
        self.source = source
        self.versions: dict[int, ModelVersion] = {}
        self.error = source.error if source else ""

    def reason(self) -> str:
        if self.error:
            return self.error
        failed = [v.reason for v in self.versions.values() if v.state is ModelState.FAILED]
        return "; ".join(failed)


class Server:
    """Serves the models of one repository; see the module docstring for the lifecycle."""

    name = "dagserve"
    version = __version__
    extensions = EXTENSIONS

    def __init__(self, options: ServerOptions | None = None, **kwargs: Any) -> None:
        self.options = options or ServerOptions(**kwargs)
        self._models: dict[str, _Model] = {}
        self._tg: TaskGroup | None = None
        self._started = False
        self._stopping = False
        size = self.options.response_cache_bytes
        self.cache = ResponseCache(size) if size > 0 else None

    # -- lifecycle ----------------------------------------------------------------------------
    async def __aenter__(self) -> Server:  # noqa: PYI034 - Server is not meant to be subclassed
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._load_initial()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        self._started = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._stopping = True
        for entry in self._models.values():
            for version in entry.versions.values():
                version.unload()
        assert self._tg is not None
        return await self._tg.__aexit__(exc_type, exc, tb)

    async def _load_initial(self) -> None:
        repo = self.options.model_repository
        if repo is None:
            return
        sources = scan(repo)
        if self.options.model_control_mode == "explicit":
            wanted = set(self.options.load_models)
            if "*" not in wanted:
                unknown = wanted - set(sources)
                if unknown:
                    raise ConfigError(f"--load-model names unknown models: {', '.join(sorted(unknown))}")
                sources = {n: s for n, s in sources.items() if n in wanted}
        # Models load concurrently; pipelines after them, since they check their members, and
        # a pipeline calling other pipelines after those.
        from .pipeline import load_order

        models = [s for s in sources.values() if not _is_pipeline(s)]
        for group in (models, *load_order(s for s in sources.values() if _is_pipeline(s))):
            async with anyio.create_task_group() as tg:
                for source in group:
                    tg.start_soon(self._load_source, source)

    async def _load_source(self, source: ModelSource, spec: PipelineSpec | None = None) -> None:
        entry = _Model(source.name, source)
        self._models[source.name] = entry
        if source.error or source.config is None:
            log.error("model '%s' cannot load: %s", source.name, source.error)
            return
        # Backends that can read the model file (ONNX) fill in what the config leaves out.
        config = await anyio.to_thread.run_sync(complete_config, source.config, source.path, source.versions)
        platform = config.platform or config.backend_name
        assert self._tg is not None
        for number in source.versions:
            version: ModelVersion
            load: Callable[[], Awaitable[Any]]
            if _is_pipeline(source):
                from .pipeline import pipeline_version

                version, load = await pipeline_version(
                    self, source, config, number=number, spec=spec, platform=platform, cache=self.cache
                )
            else:
                version = ModelVersion(
                    name=source.name, version=number, config=config, platform=platform, cache=self.cache
                )
                load = functools.partial(self._load_instances, source, config, number)
            entry.versions[number] = version
            await self._tg.start(version.serve, load)

    async def _load_instances(self, source: ModelSource, config: ModelConfig, number: int) -> list[ModelInstance]:
        backend = get_backend(config.backend_name)
        contexts = []
        for g, group in enumerate(config.instance_group or (None,)):
            count = group.count if group else 1
            # No group: KIND_AUTO, as Triton (a GPU where the backend can use one, else the CPU).
            kind = group.kind if group else InstanceKind.KIND_AUTO
            gpus = (group.gpus if group else ()) or (0,)
            for i in range(count):
                contexts.append(ModelContext(
                    name=source.name,
                    version=number,
                    config=config,
                    model_dir=source.path,
                    version_dir=source.path / str(number),
                    repository=source.path.parent,
                    instance_name=f"{source.name}_{g}_{i}",
                    instance_kind=kind.value.removeprefix("KIND_"),
                    device_id=gpus[i % len(gpus)],
                    infer=self.infer,
                    # with the loop's token: callable from any thread (an instance's own thread)
                    run_sync=functools.partial(anyio.from_thread.run, token=anyio.lowlevel.current_token()),
                ))
        instances = []
        try:
            for ctx in contexts:
                instances.append(await anyio.to_thread.run_sync(backend.load, ctx))
            await warm_up(config, instances, model_dir=source.path, owner=f"model '{source.name}' version {number}")
        except BaseException:
            for instance in instances:
                await anyio.to_thread.run_sync(instance.close)
            raise
        return instances

    async def add_pipeline(self, spec: PipelineSpec) -> None:
        """Serve a pipeline built in Python (``dagserve.Pipeline``) as model ``spec.name``,
        beside the repository's models; its members must be loaded.

        Raises:
            AlreadyExistsError: a model of that name is served.
            ConfigError: the pipeline is invalid; the message names the step and tensor.
        """
        from .pipeline import pipeline_source

        if spec.name in self._models:
            raise AlreadyExistsError(f"a model named '{spec.name}' is already served")
        await self._load_source(pipeline_source(spec), spec)
        reason = self._models[spec.name].reason()
        if reason:
            del self._models[spec.name]
            raise ConfigError(reason)

    # -- health and metadata ------------------------------------------------------------------
    def is_live(self) -> bool:
        return self._started and not self._stopping

    def is_ready(self) -> bool:
        if not self.is_live():
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
        if entry is None:
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

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (version) is ready. Raises ModelNotFoundError for unknown names."""
        try:
            return self.get_version(name, version).ready
        except ModelNotReadyError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        found = self.get_version(name, version)
        versions = [str(v) for v, mv in sorted(self._models[name].versions.items()) if mv.ready]
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
            if version:
                versions = [self.get_version(name, version)]
            elif name in self._models:
                versions = list(self._models[name].versions.values())
            else:
                raise ModelNotFoundError(f"unknown model '{name}'")
        else:
            versions = [v for e in self._models.values() for v in e.versions.values()]
        return {"model_stats": [v.stats.snapshot() for v in versions if v.state is not ModelState.UNLOADED]}

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
                entries.append({"name": name, "version": str(number), "state": v.state.triton_name, "reason": v.reason})
        return entries

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Load (or reload) ``name`` from the repository; a ``config`` parameter (JSON text)
        overrides the config on disk.

        Raises:
            UnsupportedError: the server runs with model control mode ``none``.
            ModelNotFoundError: no such model directory.
            ConfigError / ModelNotReadyError: the model failed to load (message says why).
        """
        self._require_explicit("load")
        repo = self.options.model_repository
        model_dir = repo / name if repo else None
        override = (parameters or {}).get("config")
        if model_dir is None or not model_dir.is_dir():
            raise ModelNotFoundError(f"no model '{name}' in the repository")
        source = read_model(model_dir)
        if override:
            config = parse_config(override, path=model_dir / "config.json", name=name)
            available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
            source = ModelSource(
                name=name, path=model_dir, config=config, config_path=None,
                versions=tuple(config.version_policy.select(available)),
            )
        await self._unload(name)
        await self._load_source(source)
        entry = self._models[name]
        if entry.reason():
            raise ModelNotReadyError(f"failed to load '{name}': {entry.reason()}")

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """Unload every version of ``name``; requests in flight finish first.

        Raises:
            UnsupportedError: model control mode ``none``.
            ModelNotFoundError: the model is not loaded.
        """
        self._require_explicit("unload")
        if name not in self._models:
            raise ModelNotFoundError(f"model '{name}' is not loaded")
        await self._unload(name)

    async def _unload(self, name: str) -> None:
        entry = self._models.pop(name, None)
        if entry is None:
            return
        for version in entry.versions.values():
            version.unload()
        for version in entry.versions.values():
            await version.wait_closed()

    def _require_explicit(self, action: str) -> None:
        if self.options.model_control_mode != "explicit":
            raise UnsupportedError(
                f"cannot {action} models: the server runs with model control mode "
                f"'{self.options.model_control_mode}' (start it with --model-control-mode explicit)"
            )


def _is_pipeline(source: ModelSource) -> bool:
    return source.config is not None and source.config.backend_name in ("ensemble", "pipeline")
