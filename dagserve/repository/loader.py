"""Reading a model repository on disk: model directories, their config and their versions.

Layout (Triton's)::

    <repository>/<model>/config.pbtxt | config.yaml
    <repository>/<model>/<version>/...        one directory per version, a positive integer

A broken model never stops the others: :func:`scan` returns one :class:`ModelSource` per model
directory, with either a config or the error that explains why it cannot load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .config import ModelConfig

__all__ = ["ModelSource", "load_config", "parse_config", "scan"]

log = logging.getLogger("dagserve.repository")

CONFIG_NAMES = ("config.pbtxt", "config.yaml", "config.yml")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSource:
    """One model directory: its config (or why it has none) and the versions to serve."""

    name: str
    path: Path
    config: ModelConfig | None
    config_path: Path | None
    versions: tuple[int, ...] = ()
    error: str = ""


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


def read_model(model_dir: Path) -> ModelSource:
    """Read one model directory, never raising: problems go into ``ModelSource.error``."""
    name = model_dir.name
    try:
        config, config_path = load_config(model_dir)
    except ConfigError as exc:
        return ModelSource(name=name, path=model_dir, config=None, config_path=None, error=str(exc))
    available = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    versions = tuple(config.version_policy.select(available))
    error = ""
    if config.backend_name not in ("ensemble", "pipeline") and not versions:
        error = (
            f"{model_dir}: no version directory to serve (found {sorted(available) or 'none'}; "
            "add e.g. 1/ with the model files)"
        )
    elif config.backend_name in ("ensemble", "pipeline") and not versions:
        # Ensembles need no files; Triton still serves them as version 1.
        versions = (1,)
    return ModelSource(
        name=name, path=model_dir, config=config, config_path=config_path, versions=versions, error=error
    )


def load_config(model_dir: Path) -> tuple[ModelConfig, Path]:
    """The config of the model in ``model_dir`` and the file it came from.

    Raises:
        ConfigError: no config file, or one that is malformed; the message names the file and
            the field.
    """
    found = [model_dir / n for n in CONFIG_NAMES if (model_dir / n).is_file()]
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
    if path.suffix == ".pbtxt":
        from .pbtxt import pbtxt_to_dict

        data = pbtxt_to_dict(text, path=path)
        strict = False
    elif path.suffix == ".json":
        # security: JSON (a repository load's ``config`` override comes from the wire), never
        # YAML, whose tags and aliases a client should not get to use.
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object of config fields, got {type(data).__name__}")
        strict = True
    else:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        strict = True
    config = validate(data, path=path, strict=strict)
    if config.name and config.name != name:
        raise ConfigError(f"{path}: field 'name': '{config.name}' does not match the directory name '{name}'")
    return config.model_copy(update={"name": name})


def validate(data: dict[str, Any], *, path: Path, strict: bool = True) -> ModelConfig:
    """Validate ``data`` as a ModelConfig.

    With ``strict=False`` (Triton pbtxt, where protobuf already checked field names), fields
    of Triton's schema that dagserve does not model are dropped with a warning instead of
    failing the model.

    Raises:
        ConfigError: the first problems, each as ``file: field 'a.b[0].c': message``.
    """
    while True:
        try:
            return ModelConfig.model_validate(data)
        except ValidationError as exc:
            extras = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
            if strict or not extras or len(extras) != len(exc.errors()):
                raise ConfigError(_describe(exc, path)) from None
            for loc in extras:
                log.warning("%s: field '%s' is not supported by dagserve and is ignored", path, _loc(loc))
                _drop(data, loc)


def _describe(exc: ValidationError, path: Path) -> str:
    lines = []
    for e in exc.errors()[:5]:
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{path}: field '{_loc(e['loc'])}': {msg}")
    more = len(exc.errors()) - 5
    if more > 0:
        lines.append(f"... and {more} more")
    return "; ".join(lines)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _drop(data: Any, loc: tuple[Any, ...]) -> None:
    for part in loc[:-1]:
        data = data[part]
    data.pop(loc[-1], None)
