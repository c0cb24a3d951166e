"""The security flags of ``dagserve serve``: confinement, limits, restricted APIs, TLS, client
shared memory.

Kept beside :mod:`dagserve.cli` so that the flags of one concern live together;
``cli.build_parser`` calls :func:`add_arguments`, and ``cli._serve`` spreads
:func:`server_options` into ``ServerOptions`` and :func:`serve_options` into ``FrontendOptions``.
Every flag reads ``DAGSERVE_<FLAG>`` from the environment when not given (the flag winning).
See ``docs/security.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError
from .frontends.restricted import CATEGORIES, GRPC_HEADER_PREFIX, Restrictions
from .frontends.tls import TLSConfig
from .limits import Limits

__all__ = ["add_arguments", "env", "parse_bool", "serve_options", "server_options"]


def env(name: str, default: str | None = None) -> str | None:
    """The environment variable ``DAGSERVE_<NAME>`` of a flag (``--http-port`` -> ``DAGSERVE_HTTP_PORT``)."""
    return os.environ.get("DAGSERVE_" + name.upper().replace("-", "_"), default)


def parse_bool(value: str) -> bool:
    """An argparse type: true/false, 1/0, yes/no, on/off."""
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
        "--allow-symlinks-outside-repository", type=parse_bool, nargs="?", const=True,
        default=parse_bool(env("allow-symlinks-outside-repository", "false") or "false"),
        help="follow symlinks in model directories that lead outside the model repository "
             "(default false: such models are refused)",
    )
    defaults = Limits()
    for flag, text in _LIMIT_FLAGS.items():
        default = getattr(defaults, flag.replace("-", "_"))
        g.add_argument(f"--{flag}", type=_positive, default=_positive(env(flag, str(default)) or str(default)),
                       help=f"{text} (default {default}; env DAGSERVE_{flag.upper().replace('-', '_')})")
    apis = ", ".join(CATEGORIES)
    g.add_argument("--http-restricted-api", action="append", default=None, metavar="API[,API...]:HEADER=VALUE",
                   help=f"HTTP APIs ({apis}) that need the header HEADER with value VALUE (403 otherwise); "
                        "repeatable; env DAGSERVE_HTTP_RESTRICTED_API, values separated by ';'")
    g.add_argument("--grpc-restricted-protocol", action="append", default=None, metavar="API[,API...]:KEY=VALUE",
                   help=f"gRPC APIs ({apis}) that need the metadata {GRPC_HEADER_PREFIX}KEY with value VALUE "
                        "(PERMISSION_DENIED otherwise); repeatable; env DAGSERVE_GRPC_RESTRICTED_PROTOCOL, ';'-separated")
    for proto in ("http", "grpc"):
        upper = proto.upper() if proto == "http" else "gRPC"
        g.add_argument(f"--{proto}-use-ssl", type=parse_bool, nargs="?", const=True,
                       default=parse_bool(env(f"{proto}-use-ssl", "false") or "false"),
                       help=f"serve {upper} over TLS (needs --{proto}-server-cert and --{proto}-server-key)")
        g.add_argument(f"--{proto}-use-ssl-mutual", type=parse_bool, nargs="?", const=True,
                       default=parse_bool(env(f"{proto}-use-ssl-mutual", "false") or "false"),
                       help=f"{upper} over TLS, and every client must present a certificate signed by "
                            f"--{proto}-root-cert")
        g.add_argument(f"--{proto}-server-cert", type=Path, default=env(f"{proto}-server-cert"),
                       help=f"PEM file of the {upper} server certificate (chain)")
        g.add_argument(f"--{proto}-server-key", type=Path, default=env(f"{proto}-server-key"),
                       help=f"PEM file of the {upper} server certificate's private key")
        g.add_argument(f"--{proto}-root-cert", type=Path, default=env(f"{proto}-root-cert"),
                       help=f"PEM file of the root certificate {upper} client certificates must chain to")
    g.add_argument(
        "--allow-client-shm", type=parse_bool, nargs="?", const=True,
        default=parse_bool(env("allow-client-shm", "false") or "false"),
        help="let clients register shared-memory regions (/dev/shm objects) and pass tensors through "
             "them (Triton's flag; default false: the shared-memory APIs answer UNSUPPORTED)",
    )
    g.add_argument("--metrics-address", default=env("metrics-address"),
                   help="address the (plain HTTP) metrics endpoint listens on (default: --host)")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``ServerOptions`` from the parsed flags."""
    limits = Limits(**{flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in _LIMIT_FLAGS})
    return {"allow_symlinks_outside_repository": args.allow_symlinks_outside_repository, "limits": limits}


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``FrontendOptions`` (the frontends) from the parsed flags.

    A malformed restriction or an incomplete TLS setting prints a one-line error and exits
    with status 2, as a usage error.
    """
    try:
        return {
            "http_restricted": Restrictions.parse(
                _values(args.http_restricted_api, "http-restricted-api"), flag="--http-restricted-api"
            ),
            "grpc_restricted": Restrictions.parse(
                _values(args.grpc_restricted_protocol, "grpc-restricted-protocol"),
                header_prefix=GRPC_HEADER_PREFIX, flag="--grpc-restricted-protocol",
            ),
            "http_tls": _tls(args, "http"),
            "grpc_tls": _tls(args, "grpc"),
            "metrics_address": args.metrics_address,
            "allow_client_shm": args.allow_client_shm,
        }
    except (ValueError, ConfigError) as exc:
        _usage_error(str(exc))


def _values(given: list[str] | None, flag: str) -> list[str]:
    if given is not None:
        return given
    return [v for v in (env(flag, "") or "").split(";") if v.strip()]


def _tls(args: argparse.Namespace, proto: str) -> TLSConfig | None:
    mutual = getattr(args, f"{proto}_use_ssl_mutual")
    if not (getattr(args, f"{proto}_use_ssl") or mutual):
        return None
    cert, key = getattr(args, f"{proto}_server_cert"), getattr(args, f"{proto}_server_key")
    if cert is None or key is None:
        raise ConfigError(f"--{proto}-use-ssl needs --{proto}-server-cert and --{proto}-server-key")
    root = getattr(args, f"{proto}_root_cert")
    if mutual and root is None:
        raise ConfigError(f"--{proto}-use-ssl-mutual needs --{proto}-root-cert to verify clients with")
    return TLSConfig(cert=Path(cert), key=Path(key), root_cert=Path(root) if root else None, mutual=mutual)


def _usage_error(message: str) -> NoReturn:
    print(f"dagserve: {message}", file=sys.stderr)
    raise SystemExit(2)
