"""Reading a model repository on disk: model directories, their config and their versions.

Layout (Triton's)::

    <repository>/<model>/config.pbtxt | config.yaml
    <repository>/<model>/<version>/...        one directory per version, a positive integer

A broken model never stops the others: :func:`scan` returns one :class:`ModelSource` per model
directory, with either a config or the error that explains why it cannot load.
:func:`fingerprint` tells whether a model directory changed (poll mode, reloads), and
:func:`materialize_override` writes the files of a load request (Triton's ``file:`` overrides)
into a model directory of their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, InvalidInputError
from .config import ModelConfig
from .locations import Index, describe_validation, did_you_mean, loc_text, locate, yaml_index

__all__ = [
    "ModelSource", "check_backend", "fingerprint", "generated_config", "load_config", "materialize_override", "override_files", "parse_config", "parse_json_config", "read_model", "scan",
]

log = logging.getLogger("dagserve.repository")

CONFIG_NAMES = ("config.pbtxt", "config.yaml", "config.yml")


_NO_FILES = ("ensemble", "pipeline", "remote")
"""Backends whose models need no version directory."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSource:
    """One model directory: its config (or why it has none) and the versions to serve."""

    name: str
    path: Path
    config: ModelConfig | None
    config_path: Path | None
    versions: tuple[int, ...] = ()
    error: str = ""
    config_generated: bool = False
    """No config file: ``config`` is the minimal one Triton's auto-complete starts from, the
    backend told by the model file (:func:`generated_config`). A server with auto-complete
    disabled refuses such a model, as Triton does."""


def scan(repository: Path) -> dict[str, ModelSource]:
    """Every model directory under ``repository``, by name.

    Raises:
        ConfigError: the repository itself does not exist.
    """
    if not repository.is_dir():
        raise ConfigError(f"model repository {repository} is not a directory")
    sources = {}
    for child in sorted(repository.iterdir()):
        if child.is_dir() and not child.name.startswith((".", "_")):
            sources[child.name] = read_model(child)
    return sources


def read_model(model_dir: Path, config: ModelConfig | None = None, *, name: str = "") -> ModelSource:
    """Read one model directory, never raising: problems go into ``ModelSource.error``.

    ``config`` replaces the directory's config file (a load request's ``config`` override);
    ``name`` defaults to the directory's name.
    """
    name = name or model_dir.name
    config_path: Path | None = None
    generated = False
    if config is None:
        try:
            config, config_path = load_config(model_dir)
        except ConfigError as exc:
            config = generated_config(model_dir, name) if not _config_files(model_dir) else None
            if config is None:
                return ModelSource(name=name, path=model_dir, config=None, config_path=None, error=str(exc))
            generated = True
    available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    versions = tuple(config.version_policy.select(available))
    error = ""
    if config.backend_name not in _NO_FILES and not versions:
        error = (
            f"{model_dir}: no version directory to serve (found {sorted(available) or 'none'}; "
            "add e.g. 1/ with the model files)"
        )
    elif config.backend_name in _NO_FILES and not versions:
        # Ensembles (and remote models) need no files; Triton still serves them as version 1.
        versions = (1,)
    return ModelSource(
        name=name, path=model_dir, config=config, config_path=config_path, versions=versions, error=error,
        config_generated=generated,
    )


_GENERATED_BACKENDS = (("model.plan", "tensorrt", "tensorrt_plan"), ("model.onnx", "onnxruntime", "onnxruntime_onnx"))
"""Model files Triton's core recognizes in a directory without a config (in this order), and
the backend and platform each implies (``AutoCompleteBackendFields``)."""


def generated_config(model_dir: Path, name: str = "") -> ModelConfig | None:
    """The config Triton's auto-complete starts from for a model directory without a config
    file: the backend and platform told by the model file in its first version directory
    (``model.plan``: TensorRT; ``model.onnx``: ONNX Runtime), nothing else; the backend then
    completes inputs, outputs and ``max_batch_size`` from the model. None when no such file
    is there (the directory then needs a config)."""
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not versions:
        return None
    first = versions[0]  # Triton looks at the first version directory, by name
    for filename, backend, platform in _GENERATED_BACKENDS:
        if (first / filename).exists():
            return ModelConfig(name=name or model_dir.name, backend=backend, platform=platform)
    return None


def _config_files(model_dir: Path) -> list[Path]:
    return [model_dir / n for n in CONFIG_NAMES if (model_dir / n).is_file()]


def load_config(model_dir: Path) -> tuple[ModelConfig, Path]:
    """The config of the model in ``model_dir`` and the file it came from.

    Raises:
        ConfigError: no config file, or one that is malformed; the message names the file and
            the field.
    """
    found = _config_files(model_dir)
    if not found:
        raise ConfigError(f"{model_dir}: no config.pbtxt or config.yaml")
    if len(found) > 1:
        raise ConfigError(f"{model_dir}: both {found[0].name} and {found[1].name} exist; keep one")
    path = found[0]
    config = parse_config(path.read_text(), path=path, name=model_dir.name)
    return config, path


def parse_config(text: str, *, path: Path, name: str) -> ModelConfig:
    """Parse a config file's text (pbtxt, JSON or YAML, by ``path``'s suffix) into a ModelConfig.

    The config's ``name`` defaults to ``name`` (the directory) and must match it if set.

    Raises:
        ConfigError: naming ``path`` and the field.
    """
    column = True
    if path.suffix == ".pbtxt":
        from .pbtxt import pbtxt_locations, pbtxt_to_dict

        data = pbtxt_to_dict(text, path=path)
        strict, column = False, False
        index: Index = pbtxt_locations(text)
    else:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            if mark is not None:
                problem = getattr(exc, "problem", None) or exc
                raise ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}") from None
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        strict = True
        index = yaml_index(text)
    config = validate(data, path=path, strict=strict, index=index, column=column)
    if config.name and config.name != name:
        raise ConfigError(
            f"{path}{locate(('name',), index, column=column)}: field 'name': '{config.name}' does not match "
            f"the directory name '{name}'"
        )
    config = config.model_copy(update={"name": name})
    check_backend(config, path=path, index=index, column=column)
    return config


def check_backend(config: ModelConfig, *, path: Path, index: Index = {}, column: bool = True) -> None:  # noqa: B006
    """Refuse a ``backend`` or ``platform`` that names no backend dagserve has, with the
    closest name as a hint ("unknown backend 'onnxrntime' (did you mean 'onnxruntime'?)").

    Raises:
        ConfigError: ``file:line: field 'backend': unknown backend ...``.
    """
    from ..backends import backend_names  # the backends import this package: import late

    known = backend_names()
    field = "backend" if config.backend else "platform"
    if config.backend_name in known:
        return
    if not config.backend_name:
        raise ConfigError(
            f"{path}: field 'backend': no backend or platform set (e.g. backend: \"python\" with 1/model.py; "
            f"dagserve has: {', '.join(sorted(known))})"
        )
    from .config import PLATFORMS

    spelt = config.backend if config.backend else config.platform
    candidates = known if config.backend else (*known, *PLATFORMS)
    raise ConfigError(
        f"{path}{locate((field,), index, column=column)}: field '{field}': unknown {field} '{spelt}'"
        f"{did_you_mean(spelt, candidates)}; dagserve has: {', '.join(sorted(candidates))}"
    )


def parse_json_config(text: str, *, name: str) -> ModelConfig:
    """Parse the JSON config of a load request (Triton's ``config`` parameter).

    Triton's JSON form of ``ModelConfig`` (``input``/``data_type``/``dims``, int64 fields as
    strings or numbers) is read through protobuf, as Triton reads it, and checked like a
    ``config.pbtxt``; JSON in dagserve's native spellings (``inputs``, ``datatype``, ``shape``,
    ``pipeline``) is checked like a ``config.yaml``.

    Raises:
        ConfigError: naming the parameter and the field.
    """
    from google.protobuf import json_format

    from .._proto import model_config_pb2

    where = Path("load parameter 'config'")
    try:
        data = json.loads(text)  # security: JSON from the wire, never YAML (no tags or aliases)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of config fields, got {type(data).__name__}")
    strict = True
    message = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError:
        pass  # not Triton's schema: dagserve's native spellings, checked strictly below
    else:
        data, strict = json_format.MessageToDict(message, preserving_proto_field_name=True), False
    config = validate(data, path=where, strict=strict)
    if config.name and config.name != name:
        raise ConfigError(f"{where}: field 'name': '{config.name}' does not match the model name '{name}'")
    config = config.model_copy(update={"name": name})
    check_backend(config, path=where)
    return config


def validate(
    data: dict[str, Any], *, path: Path, strict: bool = True, index: Index = {}, column: bool = True  # noqa: B006
) -> ModelConfig:
    """Validate ``data`` as a ModelConfig; ``index`` locates the fields in the file (see
    :mod:`.locations`), ``column`` whether messages give the column too.

    With ``strict=False`` (Triton pbtxt, where protobuf already checked field names), fields
    of Triton's schema that dagserve does not model are dropped with a warning instead of
    failing the model.

    Raises:
        ConfigError: the first problems, each as ``file:line:col: field 'a.b[0].c': message``
            (an unknown field with the closest known name as a hint).
    """
    while True:
        try:
            return ModelConfig.model_validate(data)
        except ValidationError as exc:
            extras = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
            if strict or not extras or len(extras) != len(exc.errors()):
                raise ConfigError(
                    describe_validation(exc, path=path, index=index, model=ModelConfig, column=column)
                ) from None
            for loc in extras:
                log.warning("%s: field '%s' is not supported by dagserve and is ignored", path, loc_text(loc))
                _drop(data, loc)


def _drop(data: Any, loc: tuple[Any, ...]) -> None:
    for part in loc[:-1]:
        data = data[part]
    data.pop(loc[-1], None)


# -- change detection ----------------------------------------------------------------------------
def fingerprint(model_dir: Path) -> str:
    """A digest of everything in ``model_dir`` that a load reads: every file's relative path,
    size and modification time, and the config file's content (so an edit within one mtime tick
    still counts). Symbolic links are followed (a version directory linked elsewhere, swapped
    by re-pointing the link, counts as changed; a link loop is walked once). Hidden entries and
    ``__pycache__`` (written by the import itself) are left out. Equal digests mean
    "unchanged"; a directory that vanishes mid-walk digests as it is.
    """
    digest = hashlib.sha256()
    seen: set[str] = set()
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        digest.update(f"dir\0{Path(root).relative_to(model_dir).as_posix()}\0{real}\0".encode())
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for file in sorted(files):
            if file.startswith("."):
                continue
            path = Path(root, file)
            try:
                stat = path.stat()
                rel = path.relative_to(model_dir).as_posix()
                digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
                if root == str(model_dir) and file in CONFIG_NAMES:
                    digest.update(path.read_bytes())
            except OSError:
                continue
    return digest.hexdigest()


# -- load overrides ----------------------------------------------------------------------------
FILE_PREFIX = "file:"


def override_files(parameters: Mapping[str, object]) -> dict[str, bytes]:
    """The ``file:<path>`` parameters of a load request, as relative path -> content.

    HTTP sends the content base64-encoded in a JSON string; gRPC sends raw bytes
    (``bytes_param``). Each path must stay inside the model directory.

    Raises:
        InvalidInputError: naming the parameter: not base64, not bytes or text, an absolute
            path, a ``..`` component, or an empty name.
    """
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if not key.startswith(FILE_PREFIX):
            continue
        rel = key[len(FILE_PREFIX):]
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise InvalidInputError(
                f"load parameter '{key}': the path must be relative, inside the model directory, "
                "with no '..', '.' or empty components (e.g. 'file:1/model.py')"
            )
        if isinstance(value, bytes):
            files[rel] = value
        elif isinstance(value, str):
            try:
                files[rel] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInputError(f"load parameter '{key}': the content is not valid base64") from None
        else:
            raise InvalidInputError(
                f"load parameter '{key}': expected base64 text (HTTP) or bytes (gRPC), got {type(value).__name__}"
            )
    return files


def materialize_override(root: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (from :func:`override_files`) into a fresh model directory
    ``root/<unique>/<name>`` and return it. As on Triton, the override directory holds only
    these files: nothing of the repository's model directory is used.

    Raises:
        InvalidInputError: a path would land outside the directory (checked again after
            resolving, so no link or odd name can escape).
    """
    import tempfile

    model_dir = Path(tempfile.mkdtemp(prefix="load-", dir=root)) / name
    model_dir.mkdir()
    base = model_dir.resolve()
    for rel, content in files.items():
        target = (model_dir / rel).resolve()
        if not target.is_relative_to(base) or target == base:
            raise InvalidInputError(f"load parameter '{FILE_PREFIX}{rel}': the path leaves the model directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return model_dir
