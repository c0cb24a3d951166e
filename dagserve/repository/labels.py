"""Class labels of a model's outputs: the files the config's ``label_filename`` names.

As on Triton (``core/src/model.cc``, ``label_provider.cc``), the file is relative to the model
directory (not a version directory) and holds one label per line, the label of class ``i`` on
line ``i`` (0-based): a final newline does not add a label, an empty line is a class without
a label. A line ending ``\\r\\n`` gives its label without the ``\\r`` (Triton would keep it).
The labels are read once, when the model loads; the classification extension
(:mod:`dagserve.classification`) appends them to its results.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError, InvalidInputError
from .config import ModelConfig
from .confine import check_file_name, inside

__all__ = ["load_labels", "read_labels"]


def read_labels(path: Path) -> tuple[str, ...]:
    """The labels in the file at ``path``, one per line (UTF-8).

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: it is not UTF-8 text.
    """
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    return tuple(line.removesuffix("\r") for line in lines)


def load_labels(
    config: ModelConfig, model_dir: Path, *, owner: str, allow_symlinks_outside: bool = False
) -> Mapping[str, tuple[str, ...]]:
    """``{output: labels}`` for every output of ``config`` with a ``label_filename``, read
    from ``model_dir`` (confined to it, as every model file: see :mod:`.confine`).

    Raises:
        ConfigError: a file name that leaves the model directory, or a file that is missing,
            unreadable or not UTF-8; the message names ``owner``, the output and the file.
    """
    labels: dict[str, tuple[str, ...]] = {}
    for output in config.output:
        if not output.label_filename:
            continue
        field = f"{owner}: output '{output.name}' label_filename"
        try:
            name = check_file_name(output.label_filename, field=field)
            path = inside(model_dir, Path(name), allow_symlinks_outside=allow_symlinks_outside, field=field)
        except InvalidInputError as exc:
            raise ConfigError(str(exc)) from None
        try:
            labels[output.name] = read_labels(path)
        except FileNotFoundError:
            raise ConfigError(f"{field}: {path} does not exist (the labels file is relative to the model directory)") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{field}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
    return labels
