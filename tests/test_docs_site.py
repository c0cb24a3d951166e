"""The docs site (mkdocs.yml) is strict: the build .ci/run does fails on a broken link, a
missing anchor, a page left out of the nav, or a README section docs/index.md includes that is
gone. .ci/run builds the real site; these tests build a broken copy of it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def copy_site(tmp_path: Path) -> Path:
    """A copy of what the docs site is built from, in *tmp_path*."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "dagserve").symlink_to(ROOT / "dagserve")  # the API pages' source
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # their griffe extension
    return tmp_path


def build(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(root / "site")],
        check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_strict_build_fails_on_broken_links_anchors_and_pages_outside_the_nav(tmp_path: Path) -> None:
    """A link to a missing page, to a missing anchor, and a page not in the nav each fail the build
    with a message naming them; the unbroken copy builds."""
    root = copy_site(tmp_path)
    good = build(root)
    assert good.returncode == 0, good.stderr
    assert "Two commands on a fresh machine" in (root / "site" / "index.html").read_text()

    with (root / "docs" / "security.md").open("a") as f:
        f.write("\nSee [the tour](tour.md) and [reload](operations.md#no-such-section).\n")
    (root / "docs" / "orphan.md").write_text("# Not in the nav\n")
    broken = build(root)
    assert broken.returncode != 0
    assert "'tour.md'" in broken.stderr
    assert "'#no-such-section'" in broken.stderr
    assert "orphan.md" in broken.stderr


def test_strict_build_fails_when_the_readme_quick_start_section_is_gone(tmp_path: Path) -> None:
    """docs/index.md includes the README's Quick start between markers: without them the build
    fails rather than publishing a page that lost its Quick start."""
    root = copy_site(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("[start:quickstart]", "[start:renamed]"))
    result = build(root)
    assert result.returncode != 0
    assert "Snippet section 'quickstart' could not be located" in result.stderr


def test_api_pages_render_the_docstrings_rest_as_markdown() -> None:
    """The griffe extension of the API pages turns reST roles into code spans and a ``::``
    literal block into fenced code, keeping its indentation relative to the text."""
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "scripts" / "griffe_rst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Use :func:`serve_in_thread` or :meth:`~dagserve.Server.infer`::\n\n    with x:\n        y()\n\nAfter."
    assert module.markdown(text) == (
        "Use `serve_in_thread` or `infer`:\n\n```python\nwith x:\n    y()\n```\n\nAfter."
    )
