"""Confinement: nothing outside the model repository is ever read, imported or run.

Every name a client or a config gives dagserve that becomes part of a path goes through one of
these checks before anything is opened:

- :func:`check_model_name` — a model name (repository load/unload, ``--load-model``, pipeline
  members, BLS calls) is one plain directory name: no path separator, no ``.``/``..``, no NUL
  or control character, not empty.
- :func:`check_file_name` — a config field naming a file (``default_model_filename``,
  ``label_filename``, ``input_data_file``, ``pipeline_file``) or a ``file:`` override is a
  relative path that stays inside its directory (``plain=True``: a single file name).
- :func:`inside` — a path, resolved with ``realpath``, lies inside a base directory. Symlinks
  that lead out of it are refused unless the server runs with
  ``--allow-symlinks-outside-repository``; ``..`` and absolute paths are refused always.
- :func:`check_source` — one model directory before it is loaded: the directory itself (a
  symlinked model directory that points elsewhere), its config file, every symlink below it,
  and the file names its config gives.

Refusals raise :class:`~dagserve.errors.InvalidInputError` naming the field, which the frontends
answer with 400 / ``INVALID_ARGUMENT``. The checks are lexical plus ``realpath``: they defend
against what a *client* can name, not against someone who can write into the repository
(that person can already change ``model.py``); see ``docs/security.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from .loader import ModelSource

__all__ = ["check_file_name", "check_model_name", "check_source", "confined", "inside"]

log = logging.getLogger("dagserve.repository")

MAX_NAME_LENGTH = 255
"""Longest model name accepted: one directory entry on every common file system."""


def _bad_char(value: str) -> str | None:
    for ch in value:
        if ch == "\x00":
            return "a NUL character"
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"a control character ({ch!r})"
    return None


def check_model_name(name: object, *, field: str = "model name") -> str:
    """``name`` if it is a usable model name: one plain directory entry of the repository.

    Raises:
        InvalidInputError: empty, too long, ``.`` or ``..``, a path separator (``/`` or ``\\``),
            an absolute path, a NUL or control character; the message names ``field``.
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"{field}: expected a string, got {type(name).__name__}")
    shown = repr(name)[:80]
    if not name:
        raise InvalidInputError(f"{field} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"{field} {shown}... is longer than {MAX_NAME_LENGTH} characters")
    bad = _bad_char(name)
    if bad:
        raise InvalidInputError(f"{field} {shown} contains {bad}")
    if "/" in name or "\\" in name:
        raise InvalidInputError(f"{field} {shown} contains a path separator; a model name is one directory name")
    if name in (".", ".."):
        raise InvalidInputError(f"{field} {shown} is not a model name")
    return name


def check_file_name(value: object, *, field: str, plain: bool = False) -> PurePosixPath:
    """``value`` as a relative path that cannot leave the directory it is joined to.

    ``plain=True`` asks for one file name (``default_model_filename``); otherwise
    sub-directories are allowed (``warmup/x/y.bin``), but never ``..``, ``.`` components, an
    absolute path or a backslash. This is the check for ``file:`` overrides of the repository
    load API as well (``field="file:1/model.py"``).

    Raises:
        InvalidInputError: naming ``field`` and the value.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{field}: expected a file name, got {type(value).__name__}")
    shown = repr(value)[:120]
    if not value:
        raise InvalidInputError(f"{field} is empty")
    bad = _bad_char(value)
    if bad:
        raise InvalidInputError(f"{field} {shown} contains {bad}")
    if value.startswith("/") or "\\" in value or (len(value) > 1 and value[1] == ":"):
        raise InvalidInputError(f"{field} {shown} must be a relative path inside the model directory")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInputError(f"{field} {shown} must not contain '..', '.' or empty path components")
    if plain and len(parts) != 1:
        raise InvalidInputError(f"{field} {shown} must be a file name, without a directory")
    return PurePosixPath(value)


def inside(base: Path, path: Path, *, allow_symlinks_outside: bool = False, field: str = "path") -> Path:
    """``path`` if it lies inside ``base``: lexically always, and once symlinks are resolved
    (``realpath``) unless ``allow_symlinks_outside``. ``path`` may be relative to ``base``; it
    need not exist (a missing file is the caller's error to report).

    Raises:
        InvalidInputError: ``path`` leaves ``base``; the message names ``field``.
    """
    joined = base / path
    if not _within(os.path.normpath(base), os.path.normpath(joined)):
        raise InvalidInputError(f"{field}: {path} is outside {base}")
    if not allow_symlinks_outside:
        real_base = os.path.realpath(base)
        real = os.path.realpath(joined)
        if not _within(real_base, real):
            raise InvalidInputError(
                f"{field}: {joined} resolves to {real}, outside {real_base} "
                "(a symlink leaving the model repository; start the server with "
                "--allow-symlinks-outside-repository to allow it)"
            )
    return joined


def _within(base: str, path: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def check_source(source: ModelSource, repository: Path, *, allow_symlinks_outside: bool = False) -> None:
    """Check one model directory before anything of it is imported or opened.

    Checks: the model name; the model directory (and, resolved, inside the repository); the
    config file; every symlink anywhere below the model directory (each must resolve inside
    it, since a backend or a model's own ``import`` may open any file there); and the file
    names of the config (``default_model_filename``, ``label_filename`` of each output,
    ``input_data_file`` of each warmup input, ``pipeline_file``).

    Raises:
        InvalidInputError: the first violation, naming the model and the field.
    """
    name = check_model_name(source.name)
    owner = f"model '{name}'"
    model_dir = inside(repository, Path(name), allow_symlinks_outside=allow_symlinks_outside,
                       field=f"{owner}: model directory")
    if source.config_path is not None:
        inside(model_dir, Path(source.config_path.name), allow_symlinks_outside=allow_symlinks_outside,
               field=f"{owner}: config file")
    if not allow_symlinks_outside:
        _check_links(model_dir, owner)
    config = source.config
    if config is None:
        return
    if config.default_model_filename:
        check_file_name(config.default_model_filename, field=f"{owner}: default_model_filename", plain=True)
        for version in source.versions:
            inside(model_dir / str(version), Path(config.default_model_filename),
                   allow_symlinks_outside=allow_symlinks_outside, field=f"{owner}: default_model_filename")
    for output in config.output:
        if output.label_filename:
            check_file_name(output.label_filename, field=f"{owner}: output '{output.name}' label_filename")
    if config.pipeline_file:
        check_file_name(config.pipeline_file, field=f"{owner}: pipeline_file")
    for i, sample in enumerate(config.model_warmup):
        inputs = sample.get("inputs") if isinstance(sample, dict) else None
        for input_name, raw in (inputs or {}).items() if isinstance(inputs, dict) else ():
            if isinstance(raw, dict) and raw.get("input_data_file"):
                check_file_name(raw["input_data_file"],
                                field=f"{owner}: model_warmup[{i}] input '{input_name}' input_data_file")


def _check_links(model_dir: Path, owner: str) -> None:
    """Every symlink below ``model_dir`` resolves inside it (the walk does not follow links)."""
    real_base = os.path.realpath(model_dir)
    for folder, dirs, files in os.walk(model_dir, followlinks=False):
        for entry in (*dirs, *files):
            path = os.path.join(folder, entry)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if not _within(real_base, real):
                    rel = os.path.relpath(path, model_dir)
                    raise InvalidInputError(
                        f"{owner}: {rel} is a symlink to {real}, outside the model directory "
                        "(start the server with --allow-symlinks-outside-repository to allow it)"
                    )


def confined(source: ModelSource, repository: Path, *, allow_symlinks_outside: bool = False) -> ModelSource:
    """``source`` itself, or a copy without config whose ``error`` says how it breaks
    confinement (:func:`check_source`), so that a server starting up marks that model FAILED
    and loads the others. Never raises."""
    try:
        check_source(source, repository, allow_symlinks_outside=allow_symlinks_outside)
    except InvalidInputError as exc:
        log.error("refusing to load model %r: %s", source.name, exc)
        return dataclasses.replace(source, config=None, error=str(exc))
    return source
