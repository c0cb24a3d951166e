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

from .limits import Limits

__all__ = ["add_arguments", "serve_options", "server_options"]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("DAGSERVE_" + name.upper().replace("-", "_"), default)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


_LIMIT_FLAGS = {
    "max-tensor-elements": "largest number of elements in one input tensor",
    "max-inputs": "largest number of inputs in one inference request",
    "max-bytes-element-size": "largest BYTES element, in bytes",
    "max-json-depth": "deepest nesting of arrays and objects in a JSON request body",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the security flags to the ``serve`` sub-parser."""
    g = parser.add_argument_group("security (docs/security.md)")
    g.add_argument(
        "--allow-symlinks-outside-repository", type=_bool, nargs="?", const=True,
        default=_bool(_env("allow-symlinks-outside-repository", "false") or "false"),
        help="follow symlinks in model directories that lead outside the model repository "
             "(default false: such models are refused)",
    )
    defaults = Limits()
    for flag, text in _LIMIT_FLAGS.items():
        default = getattr(defaults, flag.replace("-", "_"))
        g.add_argument(f"--{flag}", type=_positive, default=_positive(_env(flag, str(default)) or str(default)),
                       help=f"{text} (default {default}; env DAGSERVE_{flag.upper().replace('-', '_')})")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``ServerOptions`` from the parsed flags."""
    limits = Limits(**{flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in _LIMIT_FLAGS})
    return {"allow_symlinks_outside_repository": args.allow_symlinks_outside_repository, "limits": limits}


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``ServeOptions`` (the frontends) from the parsed flags."""
    return {}
