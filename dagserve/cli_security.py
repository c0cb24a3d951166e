"""The security flags of ``dagserve serve``: confinement, limits, restricted APIs, TLS.

Kept beside :mod:`dagserve.cli` so that the flags of one concern live together;
``cli.build_parser`` calls :func:`add_arguments`, and ``cli._serve`` spreads
:func:`server_options` into ``ServerOptions`` and :func:`serve_options` into ``ServeOptions``.
Every flag reads ``DAGSERVE_<FLAG>`` from the environment when not given (the flag winning).
See ``docs/security.md``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["add_arguments", "serve_options", "server_options"]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("DAGSERVE_" + name.upper().replace("-", "_"), default)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the security flags to the ``serve`` sub-parser."""
    g = parser.add_argument_group("security (docs/security.md)")
    g.add_argument(
        "--allow-symlinks-outside-repository", type=_bool, nargs="?", const=True,
        default=_bool(_env("allow-symlinks-outside-repository", "false") or "false"),
        help="follow symlinks in model directories that lead outside the model repository "
             "(default false: such models are refused)",
    )


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``ServerOptions`` from the parsed flags."""
    return {"allow_symlinks_outside_repository": args.allow_symlinks_outside_repository}


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``ServeOptions`` (the frontends) from the parsed flags."""
    return {}
