"""``fingerprint``: what counts as a change of a model directory (poll mode, reloads)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from dagserve.repository.loader import fingerprint


def make(tmp_path: Path) -> Path:
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "config.yaml").write_text("backend: python\n")
    (model / "1" / "model.py").write_text("x = 1\n")
    return model


def test_unchanged_directory_digests_the_same(tmp_path: Path) -> None:
    """Reading, importing (``__pycache__``) and hidden files do not count as changes."""
    model = make(tmp_path)
    before = fingerprint(model)
    (model / "1" / "__pycache__").mkdir()
    (model / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (model / ".config.yaml.swp").write_text("editor")
    assert fingerprint(model) == before


def test_changes_that_count(tmp_path: Path) -> None:
    """A config edit of the same size and time, a touched or rewritten model file, and a version
    directory added or removed each change the digest."""
    model = make(tmp_path)
    seen = [fingerprint(model)]
    config = model / "config.yaml"
    stat = config.stat()
    config.write_text("backend: pythoN\n")  # same size
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time
    seen.append(fingerprint(model))
    stat = (model / "1" / "model.py").stat()
    os.utime(model / "1" / "model.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    seen.append(fingerprint(model))
    (model / "2").mkdir()
    (model / "2" / "model.py").write_text("x = 2\n")
    seen.append(fingerprint(model))
    (model / "2" / "model.py").unlink()
    (model / "2").rmdir()
    seen.append(fingerprint(model))
    assert all(a != b for a, b in itertools.pairwise(seen)), seen


def test_a_linked_version_directory_is_followed(tmp_path: Path) -> None:
    """A version directory that is a link elsewhere: re-pointing the link is a change, and a
    link loop does not hang the walk."""
    model = make(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.py").write_text("x = 3\n")
    (model / "3").symlink_to(tmp_path / "a")
    first = fingerprint(model)
    (model / "3").unlink()
    (model / "3").symlink_to(tmp_path / "b")
    assert fingerprint(model) != first
    (model / "1" / "loop").symlink_to(model)
    assert fingerprint(model) == fingerprint(model)
