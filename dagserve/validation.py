"""Validating a whole model repository without serving it (``dagserve validate``).

:class:`RepositoryValidator` reads each model directory as the server would and collects every
problem it can find before anything is served:

* configs that do not parse (file and field), unknown backends, missing version directories;
* confinement, as the server checks it before loading (:func:`~dagserve.repository.confine.check_source`):
  a model directory or file that is a symlink out of the repository, a config naming a file
  outside its directory (``default_model_filename: ../x.py``). Such a model is an error with the
  server's message, and nothing of it is imported;
* the class labels files (``label_filename``), read as the server reads them at load;
* Python models: each served version is created once with the backend's own ``load`` (so the
  checks are the server's: the file exists, imports, and defines a model form) in a worker
  thread, then closed; modules its directory brings in are forgotten again, so one model's
  ``utils.py`` is never what the next model's ``import utils`` finds;
* framework models (ONNX Runtime, PyTorch, TensorRT, FIL): the model file is present, and the
  config is auto-completed from it where the backend can (ONNX). The framework itself is not
  needed; when it is not installed, that is a warning, since validation may run elsewhere;
* pipelines (Triton ensembles, YAML, Python DSL): compiled, then checked against their members'
  configs by :func:`~dagserve.dsl.typecheck.check_pipeline`, the server's own load-time check.
  A pipeline calling another pipeline is checked against the config the inner one is served
  with (its inferred outputs included).

Findings are collected, never raised: a broken model never hides the others, and a pipeline
whose member is broken says so in one line. Warnings that the code under check logs (to
``dagserve.*`` loggers) become warnings of the model being checked.

Layering: imports the repository loader and the backends' load protocol; never the engine.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import logging
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .backends import get_backend
from .backends._imports import forgetting_imports
from .backends.base import Backend, instance_contexts
from .dsl.compile import compile_config
from .dsl.typecheck import CheckedPipeline, check_pipeline, served_config
from .errors import ConfigError, DagserveError, InvalidInputError, UnsupportedError
from .repository.config import PIPELINE_BACKENDS, ModelConfig
from .repository.confine import check_source
from .repository.labels import load_labels
from .repository.loader import ModelSource, scan
from .types import InferRequest, InferResponse

__all__ = ["Finding", "ModelReport", "RepositoryReport", "RepositoryValidator", "Severity", "validate_repository"]

class Severity(enum.Enum):
    """How bad a finding is: an ERROR stops the model from loading; a WARNING does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One problem of one model; prints as ``error: MODEL: message``."""

    model: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.model}: {self.message}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelReport:
    """What checking one model directory found.

    ``kind`` is the backend (``python``, ``onnxruntime``, ``pipeline``, ``ensemble``…, or
    ``unknown`` when the config did not parse); ``pipeline`` is the checked pipeline when the
    model is a pipeline without errors.
    """

    name: str
    kind: str
    versions: tuple[int, ...] = ()
    findings: tuple[Finding, ...] = ()
    pipeline: CheckedPipeline | None = None

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        """True when the model would load (warnings allowed)."""
        return not self.errors

    @property
    def is_pipeline(self) -> bool:
        return self.kind in PIPELINE_BACKENDS

    def describe(self) -> str:
        """A short description for the ``ok:`` line, e.g. ``python, version 1``."""
        if self.pipeline is not None:
            n = len(self.pipeline.spec.steps)
            return f"{self.kind}, {n} step{'s' if n != 1 else ''}"
        plural = "s" if len(self.versions) != 1 else ""
        return f"{self.kind}, version{plural} {', '.join(map(str, self.versions)) or 'none'}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RepositoryReport:
    """Every model's report, in directory-name order."""

    repository: Path
    models: tuple[ModelReport, ...] = field(default=())

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for m in self.models for f in m.findings)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for m in self.models for f in m.errors)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for m in self.models for f in m.warnings)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line: how many models and pipelines were checked, and what was found."""
        pipelines = sum(m.is_pipeline for m in self.models)
        failed = sum(not m.ok for m in self.models)
        return (
            f"{_count(len(self.models) - pipelines, 'model')} and {_count(pipelines, 'pipeline')} checked: "
            f"{len(self.models) - failed} ok, {failed} with errors; "
            f"{_count(len(self.errors), 'error')}, {_count(len(self.warnings), 'warning')}"
        )


def validate_repository(
    repository: Path, *, load_models: bool = True, allow_symlinks_outside: bool = False
) -> RepositoryReport:
    """Validate every model and pipeline of ``repository`` (see the module doc).

    Raises:
        ConfigError: ``repository`` is not a directory. Problems of models never raise.
    """
    return RepositoryValidator(
        repository, load_models=load_models, allow_symlinks_outside=allow_symlinks_outside
    ).validate_all()


class RepositoryValidator:
    """Validates the models of one repository on demand, each once.

    ``load_models=False`` skips creating Python model instances (configs, files and pipelines
    are still checked): enough to type a pipeline's tensors for ``dagserve graph``.
    ``allow_symlinks_outside``: as the server's ``--allow-symlinks-outside-repository``.
    Not thread-safe; one checker per command.

    Raises (constructor):
        ConfigError: ``repository`` is not a directory.
    """

    def __init__(self, repository: Path, *, load_models: bool = True, allow_symlinks_outside: bool = False) -> None:
        self.repository = repository
        self.load_models = load_models
        self.allow_symlinks_outside = allow_symlinks_outside
        self._log = _Capture()
        with self._log.capturing() as scanned:
            self._sources: dict[str, ModelSource] = scan(repository)
        self._scan_warnings = scanned
        self._reports: dict[str, ModelReport] = {}
        self._configs: dict[str, ModelConfig] = {}  # as served: auto-completed, pipelines typed
        self._failed: dict[str, dict[int, str]] = {}  # model -> version -> why it cannot load
        self._checking: list[str] = []  # pipelines being checked, to catch pipelines calling each other

    @property
    def names(self) -> tuple[str, ...]:
        """Every model directory's name, sorted."""
        return tuple(self._sources)

    def validate_all(self) -> RepositoryReport:
        """Validate every model and pipeline."""
        return RepositoryReport(
            repository=self.repository, models=tuple(self.validate(n) for n in self._sources)
        )

    def validate(self, name: str) -> ModelReport:
        """Validate model ``name`` (and, for a pipeline, the members it calls).

        Raises:
            KeyError: no model directory of that name.
        """
        if name in self._reports:
            return self._reports[name]
        source = self._sources[name]
        findings = [
            Finding(model=name, severity=Severity.WARNING, message=text)
            for text in self._scan_warnings
            if text.startswith(str(source.path) + "/")
        ]
        if source.config is not None and not source.error:
            try:  # security: the server's confinement, before anything of the model is opened
                check_source(source, self.repository, allow_symlinks_outside=self.allow_symlinks_outside)
            except InvalidInputError as exc:
                # One finding: the message is the server's, whole (it may contain "; ").
                findings.append(Finding(model=name, severity=Severity.ERROR, message=str(exc)))
                self._failed[name] = {0: str(exc)}
                report = ModelReport(name=name, kind=source.config.backend_name, versions=source.versions,
                                     findings=tuple(findings))
                self._reports[name] = report
                return report
            try:  # the labels files of the classification extension, read as the server reads them
                load_labels(source.config, source.path, owner=f"model '{name}'",
                            allow_symlinks_outside=self.allow_symlinks_outside)
            except ConfigError as exc:
                findings.append(Finding(model=name, severity=Severity.ERROR, message=str(exc)))
                self._failed[name] = {0: str(exc)}
        if source.config is None or source.error:
            kind = source.config.backend_name if source.config is not None else "unknown"
            findings += _errors(name, source.error)
            self._failed[name] = {0: source.error}
            report = ModelReport(name=name, kind=kind, versions=source.versions, findings=tuple(findings))
        elif source.config.is_pipeline:
            report = self._check_pipeline(source, source.config, findings)
        else:
            report = self._check_model(source, source.config, findings)
        self._reports[name] = report
        return report

    # -- models ------------------------------------------------------------------------------
    def _check_model(self, source: ModelSource, config: ModelConfig, findings: list[Finding]) -> ModelReport:
        name = source.name
        failed = self._failed.setdefault(name, {})
        with self._log.capturing() as logged:
            try:
                backend = get_backend(config.backend_name)
            except ConfigError as exc:
                backend = None
                findings += _errors(name, f"{source.config_path}: {exc}")
                failed[0] = str(exc)
            if backend is not None and backend.FILES.frameworks:
                config = self._check_framework(source, config, backend, findings)
            elif backend is not None and config.backend_name == "python" and self.load_models:
                for version in source.versions:
                    why = self._load(source, config, version, backend)
                    if why:
                        failed[version] = why
                        findings += _errors(name, why)
        findings += [Finding(model=name, severity=Severity.WARNING, message=m) for m in logged]
        self._configs[name] = config
        return ModelReport(
            name=name, kind=config.backend_name, versions=source.versions, findings=tuple(findings)
        )

    def _check_framework(
        self, source: ModelSource, config: ModelConfig, backend: Backend, findings: list[Finding]
    ) -> ModelConfig:
        """Model files present in every version; the config auto-completed where the backend
        can read the file and its framework is installed here. Returns the config as served."""
        files = backend.FILES  # the backend's own declaration, as its load() reads it
        names, modules, extra = files.candidates(config), files.frameworks, files.extra
        failed = self._failed[source.name]
        for version in source.versions:
            version_dir = source.path / str(version)
            if not any((version_dir / n).is_file() for n in names):
                why = f"{version_dir}: no model file (expected {' or '.join(names)})"
                failed[version] = why
                findings += _errors(source.name, why)
        module = " or ".join(modules)
        installed = any(importlib.util.find_spec(m) is not None for m in modules)
        if not installed:
            findings.append(
                Finding(
                    model=source.name,
                    severity=Severity.WARNING,
                    message=f"{module} is not installed here; serving this model needs "
                    f"`pip install dagserve[{extra}]`",
                )
            )
        complete = getattr(backend, "complete_config", None)
        if complete is None or not source.versions or len(failed) == len(source.versions):
            return config
        if not installed:
            if not (config.input and config.output):
                findings.append(
                    Finding(
                        model=source.name,
                        severity=Severity.WARNING,
                        message="inputs/outputs are read from the model file at load time; without "
                        f"{module} they cannot be checked here",
                    )
                )
            return config
        newest = max(v for v in source.versions if v not in failed)
        try:
            completed: ModelConfig = complete(config, source.path / str(newest))
        except DagserveError as exc:
            failed[0] = str(exc)
            findings += _errors(source.name, str(exc))
            return config
        return completed

    def _load(self, source: ModelSource, config: ModelConfig, version: int, backend: Backend) -> str:
        """Create one instance of a Python model version and close it; why it failed, or ""."""
        if config.parameters.get("execution") == "process":
            # Import it here rather than start a worker process: the same code is checked.
            config = config.model_copy(update={"parameters": {**config.parameters, "execution": "thread"}})
        # The first instance the server would create (KIND_AUTO mapped as the server maps it).
        context = instance_contexts(source.name, version, config, source.path, infer=_no_bls)[0]

        def load_and_close() -> None:
            instance = backend.load(context)
            instance.close()

        # A worker thread, as when served: model code may start its own event loop, and this
        # checker may be called from a running one (a test, an async caller).
        with forgetting_imports(source.path), ThreadPoolExecutor(max_workers=1) as pool:
            try:
                pool.submit(load_and_close).result()
            except DagserveError as exc:
                return str(exc)
            except Exception as exc:  # noqa: BLE001 - model code may raise anything while loading
                return f"{_where(exc, source.path)}{type(exc).__name__}: {exc}"
        return ""

    # -- pipelines ---------------------------------------------------------------------------
    def _check_pipeline(
        self, source: ModelSource, config: ModelConfig, findings: list[Finding]
    ) -> ModelReport:
        name = source.name
        self._checking.append(name)
        checked = None
        with self._log.capturing() as logged:
            try:
                # A pipeline_file is imported by the backends' one importer, helpers forgotten.
                spec = compile_config(config, model_dir=source.path, config_path=source.config_path)
                checked = check_pipeline(spec, self._member, known_models=self.names)
            except ConfigError as exc:
                findings += _errors(name, str(exc))
                self._failed[name] = {0: str(exc)}
            finally:
                self._checking.pop()
        findings += [Finding(model=name, severity=Severity.WARNING, message=m) for m in logged]
        if checked is not None:
            self._configs[name] = served_config(config, checked)
        return ModelReport(
            name=name,
            kind=config.backend_name,
            versions=source.versions,
            findings=tuple(findings),
            pipeline=checked,
        )

    def _member(self, model: str, version: int) -> ModelConfig:
        """The config a member is served with; raises saying why it cannot be used (the lookup
        of :func:`check_pipeline`, with the server's messages)."""
        if model not in self._sources:
            raise ConfigError(f"unknown model '{model}'")
        if model in self._checking:
            path = " -> ".join([*self._checking[self._checking.index(model) :], model])
            raise ConfigError(f"pipelines call each other: {path}")
        report = self.validate(model)
        failed = self._failed.get(model, {})  # version 0: the whole model
        which = f"model '{model}'" + (f" version {version}" if version >= 0 else "")
        if report.is_pipeline and not report.ok:
            raise ConfigError(f"{which} is not ready: it has errors (reported under its own name)")
        if 0 in failed:
            raise ConfigError(f"{which} is not ready: {_first(failed[0])}")
        if version >= 0 and version not in report.versions:
            have = ", ".join(map(str, report.versions)) or "none"
            raise ConfigError(f"model '{model}' has no version {version} (versions: {have})")
        usable = [v for v in report.versions if v not in failed]
        if version in failed or not usable:
            reason = failed.get(version) or next(iter(failed.values()), "no version to serve")
            raise ConfigError(f"{which} is not ready: {_first(reason)}")
        return self._configs[model]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _first(message: str) -> str:
    """The first of several problems joined with "; " (the member's own report has them all)."""
    return message.split("; ")[0]


def _errors(model: str, message: str) -> list[Finding]:
    # The loader and check_pipeline join several problems with "; "; report one per line.
    return [Finding(model=model, severity=Severity.ERROR, message=m) for m in message.split("; ") if m]


def _where(exc: BaseException, directory: Path) -> str:
    """``file:line: `` of the innermost frame of ``exc`` in a file under ``directory`` (the
    model's own code), or "" when none is."""
    root = directory.resolve()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if path.is_file() and path.resolve().is_relative_to(root):
            shown = directory / path.resolve().relative_to(root)
            return f"{shown}:{frame.lineno}: "
    return ""


async def _no_bls(model: str, version: str, request: InferRequest) -> InferResponse:
    raise UnsupportedError(
        f"model '{model}' cannot be called while validating: nothing is served (BLS during initialize)"
    )


class _Capture(logging.Handler):
    """Collects the warnings dagserve's loggers emit while a model is checked, instead of
    printing them: they are reported as that model's findings."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._sink: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._sink is not None:
            self._sink.append(record.getMessage())

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[str]]:
        """Collect into the list yielded until the block ends (nested blocks collect inward)."""
        logger = logging.getLogger("dagserve")
        outer, propagate = self._sink, logger.propagate
        sink: list[str] = []
        self._sink = sink
        logger.addHandler(self)
        logger.propagate = False
        try:
            yield sink
        finally:
            logger.removeHandler(self)
            logger.propagate = propagate
            self._sink = outer
            if outer is not None:
                logger.addHandler(self)
