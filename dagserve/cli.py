"""The ``dagserve`` command line: options -> frozen config -> server. Nothing more.

Flag names follow ``tritonserver`` so scripts carry over; every flag also reads an environment
variable ``DAGSERVE_<FLAG>`` (e.g. ``DAGSERVE_HTTP_PORT``), the flag winning.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from . import cli_metrics, cli_security
from ._version import __version__
from .cli_security import env as _env
from .cli_security import parse_bool as _bool
from .drawing import FORMATS
from .engine import ServerOptions
from .engine.aliases import parse_aliases
from .errors import ConfigError, DagserveError
from .forwarding import SHM_MIN_BYTES
from .frontends.grpc_compression import COMPRESSION_LEVELS
from .frontends.limits import GrpcKeepalive, HttpLimits
from .frontends.runner import (
    DEFAULT_EXIT_TIMEOUT_SECS,
    DEFAULT_GRPC_MAX_MESSAGE_SIZE,
    DEFAULT_GRPC_SERVER,
    DEFAULT_HTTP_MAX_BODY_SIZE,
    GRPC_SERVERS,
    Addresses,
    FrontendOptions,
    serve,
)
from .tracing import parse_trace_config
from .workers import WorkerRole, auto_workers, relay_by_default, serve_channel, serve_forwarding, supervise

__all__ = ["main"]


def _port(value: str) -> int | None:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port number (0-65535; 0 picks a free port, -1 disables), got {value!r}"
        ) from None
    if port < -1 or port > 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535; 0 picks a free port, -1 disables)")
    return None if port == -1 else port


_port.__name__ = "port"  # argparse names the type in its messages ("invalid port value")


def _cache_config(value: str) -> int:
    kind, _, setting = value.partition(",")
    key, _, size = setting.partition("=")
    if kind != "local" or key != "size" or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected local,size=BYTES, got {value!r}")
    return int(size)


_HTTP_LIMIT_FLAGS: tuple[tuple[str, str, type[float | int], str], ...] = (
    ("http-header-timeout-secs", "header_timeout", float, "seconds a client has to send a request's headers"),
    ("http-body-timeout-secs", "body_timeout", float, "longest pause while receiving a request body, seconds"),
    ("http-write-timeout-secs", "write_timeout", float,
     "seconds a response may wait for a client that does not read it"),
    ("http-keep-alive-timeout-secs", "keep_alive_timeout", float, "seconds an idle keep-alive connection stays open"),
    ("http-max-connections", "max_connections", int, "open HTTP connections at most; more get 503 (0: no limit)"),
    ("http-max-header-size", "max_header_size", int, "largest HTTP request head in bytes; larger gets 431"),
)
_GRPC_KEEPALIVE_FLAGS = (  # Triton's flags and meanings; milliseconds; unset = gRPC's default
    ("grpc-keepalive-time", "keepalive_time", "ms between keepalive pings on a gRPC connection (default 7200000)"),
    ("grpc-keepalive-timeout", "keepalive_timeout", "ms to wait for a keepalive ping's ack (default 20000)"),
    ("grpc-keepalive-permit-without-calls", "keepalive_permit_without_calls",
     "allow keepalive pings with no call in flight (default false)"),
    ("grpc-http2-max-pings-without-data", "http2_max_pings_without_data",
     "pings sent with no data before a data frame is needed (default 2)"),
    ("grpc-http2-min-recv-ping-interval-without-data", "http2_min_recv_ping_interval_without_data",
     "ms expected between a client's pings without data; faster is a strike (default 300000)"),
    ("grpc-http2-max-ping-strikes", "http2_max_ping_strikes",
     "bad pings tolerated before GOAWAY (default 2; 0: any number)"),
    ("grpc-max-connection-age", "max_connection_age", "ms a gRPC connection may live (default unlimited)"),
    ("grpc-max-connection-age-grace", "max_connection_age_grace",
     "ms its calls may go on after that age (default unlimited)"),
    ("grpc-max-connection-idle", "max_connection_idle", "ms a gRPC connection may be idle (default unlimited)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dagserve", description="Serve model pipelines over KServe v2 (HTTP and gRPC).")
    parser.add_argument("--version", action="version", version=f"dagserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    s = commands.add_parser("serve", help="serve a model repository")
    s.add_argument("--model-repository", type=Path, default=_env("model-repository"), required=_env("model-repository") is None,
                   help="the model repository directory (env DAGSERVE_MODEL_REPOSITORY)")
    s.add_argument("--host", default=_env("host", "127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    s.add_argument("--http-port", type=_port, default=_port(_env("http-port", "8000") or "8000"),
                   help="HTTP port (default 8000; 0 picks a free port; -1 disables)")
    s.add_argument("--grpc-port", type=_port, default=_port(_env("grpc-port", "8001") or "8001"),
                   help="gRPC port (default 8001; 0 picks a free port; -1 disables)")
    s.add_argument("--metrics-port", type=_port, default=_port(_env("metrics-port", "8002") or "8002"),
                   help="Prometheus metrics port (default 8002; 0 picks a free port; -1 disables)")
    s.add_argument("--model-control-mode", choices=("none", "explicit", "poll"), default=_env("model-control-mode", "none"),
                   help="none: load all models at start; explicit: load --load-model ones, allow load/unload; "
                        "poll: load all, then apply repository changes every --repository-poll-secs")
    s.add_argument("--repository-poll-secs", type=_poll_secs, default=_poll_secs(_env("repository-poll-secs", "15") or "15"),
                   help="with poll mode: seconds between polls of the repository (default 15)")
    s.add_argument("--load-model", action="append", default=None,
                   help="with explicit mode: a model to load at start ('*' for all); repeatable "
                        "(env DAGSERVE_LOAD_MODEL: comma-separated)")
    s.add_argument("--model-alias", action="append", default=None, metavar="SERVED=MODEL",
                   help="also answer for MODEL (a model or pipeline) under the name SERVED, e.g. a KServe "
                        "InferenceService's name; repeatable (env DAGSERVE_MODEL_ALIAS: comma-separated)")
    s.add_argument("--strict-readiness", type=_bool, default=_bool(_env("strict-readiness", "true") or "true"),
                   help="ready only when every model is ready (default true)")
    s.add_argument("--disable-auto-complete-config", action="store_true",
                   default=_bool(_env("disable-auto-complete-config", "false") or "false"),
                   help="do not complete configs from the models (Python auto_complete_config, ONNX graphs)")
    s.add_argument("--python-execution", choices=("thread", "inline"), default=_env("python-execution", "thread"),
                   help="where sync Python models without an 'execution' parameter run: thread (default: "
                        "each instance's worker thread) or inline (the event loop: faster for short steps "
                        "that never block; a blocking one stalls the whole server)")
    s.add_argument("--workers", type=_workers, default=_env("workers", "auto") or "auto",
                   help="worker processes serving the repository behind the same ports (default auto: one per "
                        "core this process may use, at most its CPU quota; 1: one process, no supervisor); "
                        "framework models (PyTorch, ONNX, TensorRT, FIL) load in one worker only "
                        "(env DAGSERVE_WORKERS; docs/operations.md)")
    s.add_argument("--worker-spread", type=_bool, default=_bool(_env("worker-spread", "false") or "false"),
                   help="with --workers: a worker busier than another hands new requests for replicated models to it "
                        "(for clients that send everything over one connection, as gRPC does); default false: on 2 "
                        "cores it cost throughput (docs/operations.md)")
    s.add_argument("--worker-balance", type=_bool, default=_bool(_env("worker-balance", "true") or "true"),
                   help="with --workers: a worker that accepts an HTTP or gRPC connection while it serves more of that "
                        "port's connections than another worker passes it to the one serving the fewest, so that a "
                        "few connections (gRPC channels) spread evenly (default true; docs/operations.md)")
    s.add_argument("--worker-relay", type=_bool_or_auto, default=_bool_or_auto(_env("worker-relay", "auto") or "auto"),
                   help="with --workers and --grpc-server native: a worker that runs a gRPC ModelInfer call hands the "
                        "next call of its connections, as it came off the wire, to a worker that runs none, so that "
                        "the few connections of a gRPC client use every worker (default auto: on unless the workers "
                        "outnumber the cores this process may use; docs/operations.md)")
    s.add_argument("--worker-shm-min-bytes", type=int,
                   default=int(_env("worker-shm-min-bytes", str(SHM_MIN_BYTES)) or SHM_MIN_BYTES),
                   help="with --workers: a tensor of a forwarded request (a model placed 'one', spreading) of at least "
                        f"this many bytes crosses between workers in shared memory, a smaller one through the socket "
                        f"(default {SHM_MIN_BYTES}; docs/operations.md)")
    s.add_argument("--http-max-body-size", type=int, default=int(_env("http-max-body-size", str(DEFAULT_HTTP_MAX_BODY_SIZE)) or 0),
                   help=f"largest HTTP request body in bytes (default {DEFAULT_HTTP_MAX_BODY_SIZE})")
    s.add_argument("--grpc-max-message-size", type=int,
                   default=int(_env("grpc-max-message-size", str(DEFAULT_GRPC_MAX_MESSAGE_SIZE)) or 0),
                   help=f"largest gRPC message in bytes (default {DEFAULT_GRPC_MAX_MESSAGE_SIZE})")
    s.add_argument("--grpc-server", choices=GRPC_SERVERS, default=_env("grpc-server", DEFAULT_GRPC_SERVER),
                   help=f"the gRPC server: native (dagserve's own HTTP/2 server) or grpcio (grpc.aio, ~3x the CPU "
                        f"per call; docs/performance.md); default {DEFAULT_GRPC_SERVER} (env DAGSERVE_GRPC_SERVER)")
    s.add_argument("--grpc-infer-response-compression-level", type=str.lower, choices=COMPRESSION_LEVELS,
                   default=(_env("grpc-infer-response-compression-level", "none") or "none").lower(),
                   help="compress gRPC inference responses (ModelInfer, ModelStreamInfer) with gzip or deflate, as "
                        "the client accepts: none (default), low, medium, high (docs/operations.md)")
    s.add_argument("--cache-config", action="append", default=[], type=_cache_config,
                   help="response cache, Triton's form: local,size=BYTES (models opt in with response_cache)")
    s.add_argument("--trace-config", action="append", default=None, metavar="[MODE,]SETTING=VALUE",
                   help="tracing, Triton's form (repeatable): rate=N, level=TIMESTAMPS|OFF, count=N, "
                        "mode=triton|opentelemetry, triton,file=PATH, triton,log-frequency=N, "
                        "opentelemetry,url=URL, opentelemetry,resource=KEY=VALUE, opentelemetry,bsp_*=N "
                        "(env DAGSERVE_TRACE_CONFIG: space-separated; see docs/tracing.md)")
    s.add_argument("--exit-timeout-secs", type=float,
                   default=float(_env("exit-timeout-secs", str(DEFAULT_EXIT_TIMEOUT_SECS)) or 0),
                   help="on SIGTERM/SIGINT, how long requests in flight may take to finish before they are "
                        f"cancelled (default {DEFAULT_EXIT_TIMEOUT_SECS:g}); a second signal exits at once")
    http_defaults = HttpLimits()
    for flag, field, kind, text in _HTTP_LIMIT_FLAGS:
        s.add_argument(f"--{flag}", type=kind, dest=field,
                       default=kind(_env(flag, str(getattr(http_defaults, field))) or 0),
                       help=f"{text} (default {getattr(http_defaults, field):g})")
    for flag, field, text in _GRPC_KEEPALIVE_FLAGS:
        convert: Callable[[str], Any] = _bool if field == "keepalive_permit_without_calls" else int
        env = _env(flag)
        s.add_argument(f"--{flag}", type=convert, dest="grpc_" + field, default=None if env is None else convert(env),
                       help=text)
    s.add_argument("--log-level", default=_env("log-level", "info"), choices=("debug", "info", "warning", "error"),
                   help="the least severe log messages shown (default info; env DAGSERVE_LOG_LEVEL)")
    _add_log_arguments(s)  # Triton's --log-* flags (log_settings.py)
    cli_security.add_arguments(s)  # security: confinement, limits, restricted APIs, TLS
    cli_metrics.add_arguments(s)  # --allow-*-metrics, --metrics-interval-ms, --metrics-config

    v = commands.add_parser(
        "validate",
        help="check every model and pipeline of a repository without serving it",
        description="Check every model and pipeline of a repository without serving it: configs parse, "
        "Python models import and define a model, framework models have their file, pipelines compile "
        "and fit their members. Prints every error and warning, then a summary. Exit status: 0 no "
        "errors, 1 errors found, 2 the repository cannot be read.",
    )
    v.add_argument("repository", type=Path, help="the model repository directory")

    g = commands.add_parser(
        "graph",
        help="draw a pipeline's DAG (mermaid, dot, svg, png)",
        description="Draw a pipeline of a repository: inputs, steps (model, version, when/map/loop/switch), "
        "outputs, and edges labelled with tensor name, datatype and shape. mermaid and dot are text; "
        "svg and png need Graphviz's `dot` program.",
    )
    g.add_argument("repository", type=Path, help="the model repository directory")
    g.add_argument("pipeline", help="the pipeline's model name")
    g.add_argument(
        "--format", "-f", choices=FORMATS, default="mermaid", help="output format (default mermaid)"
    )
    g.add_argument("--output", "-o", type=Path, help="write to this file instead of standard output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args, sys.argv[1:] if argv is None else list(argv))
    if args.command == "validate":
        return _validate(args.repository)
    if args.command == "graph":
        return _graph(args.repository, args.pipeline, args.format, args.output)
    raise AssertionError(args.command)


def _bool_or_auto(text: str) -> bool | None:
    """A boolean flag's value, or None for ``auto`` (decided where the facts are known)."""
    return None if text.strip().lower() == "auto" else _bool(text)


def _workers(text: str) -> int:
    if text == "auto":
        return auto_workers()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--workers must be a whole number of processes (1 or more) or 'auto', not {text!r}")
    return value


def _poll_secs(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--repository-poll-secs must be a positive number of seconds, not {text}")
    return value


def _add_log_arguments(s: argparse.ArgumentParser) -> None:
    def optional_bool(flag: str) -> bool | None:
        env = _env(flag)
        return None if env is None else _bool(env)

    s.add_argument("--log-verbose", type=_verbose_level, default=_verbose_level(_env("log-verbose", "-1") or "-1"),
                   help="verbose log level: 0 none, N the verbose messages of level <= N "
                        "(default 0, or 1 with --log-level debug)")
    for kind in ("info", "warning", "error"):
        s.add_argument(f"--log-{kind}", type=_bool, default=optional_bool(f"log-{kind}"),
                       help=f"write {kind.upper()} messages, true or false (default: as --log-level says)")
    s.add_argument("--log-format", type=_log_format, default=_log_format(_env("log-format", "default") or "default"),
                   help="default (Triton's: I1202 13:05:55.829575 PID file:line] text), "
                        "ISO8601 (2026-12-02T13:05:55Z I PID file:line] text) or json (one object per line)")
    s.add_argument("--log-file", default=_env("log-file", ""),
                   help="append the log to this file instead of standard error")


def _verbose_level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"--log-verbose takes a level >= 0, not {text!r}")
    return value


def _log_format(text: str) -> str:
    from .log_settings import LogSettings

    try:
        return LogSettings(log_format=text).log_format
    except DagserveError:
        raise argparse.ArgumentTypeError(f"expected default, ISO8601 or json, got {text!r}") from None


def _log_settings(args: argparse.Namespace) -> Any:
    """The log settings of ``--log-level`` (the least severe kind of message shown) refined
    by Triton's flags, which win: ``--log-verbose``, ``--log-info/--log-warning/--log-error``."""
    from .log_settings import LogSettings

    least = ("debug", "info", "warning", "error").index(args.log_level)
    return LogSettings(
        log_file=args.log_file,
        log_info=least <= 1 if args.log_info is None else args.log_info,
        log_warning=least <= 2 if args.log_warning is None else args.log_warning,
        log_error=True if args.log_error is None else args.log_error,
        log_verbose_level=(1 if least == 0 else 0) if args.log_verbose < 0 else args.log_verbose,
        log_format=args.log_format,
    )


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    from .log_settings import log_control

    try:
        log_control().configure(_log_settings(args))
    except OSError as exc:
        print(f"dagserve: cannot open --log-file: {exc}", file=sys.stderr)
        return 2
    try:
        options = _serve_options(args)
    except (ValueError, ConfigError) as exc:  # a timeout or limit out of range, a bad --metrics-config or alias
        print(f"dagserve: {exc}", file=sys.stderr)
        return 2
    if options.server.load_models and options.server.model_control_mode != "explicit":
        # Triton refuses this too: in modes none and poll every model loads, so the flag would
        # silently do nothing.
        print(f"dagserve: --load-model (or DAGSERVE_LOAD_MODEL) requires --model-control-mode=explicit (the mode is "
              f"{options.server.model_control_mode}, which loads every model of the repository); "
              "add --model-control-mode=explicit or remove --load-model", file=sys.stderr)
        return 2
    role = WorkerRole.from_environment()  # one of the processes of a --workers N server
    if role is None:
        busy = _busy_port(options)
        if busy is not None:  # before any model loads: a port conflict is known at once
            print(f"dagserve: {busy}", file=sys.stderr)
            return 1
        _warn_if_empty(options.server.model_repository)
        if args.workers > 1:
            return supervise(argv, options, args.workers, announce=_announce)
    else:  # the supervisor checked and holds the ports
        options = dataclasses.replace(options, reuse_port=True)
        role = dataclasses.replace(role, spread=args.worker_spread, shm_min_bytes=args.worker_shm_min_bytes,
                                   balance=args.worker_balance,
                                   relay=relay_by_default(role.count) if args.worker_relay is None else args.worker_relay)
        role.end_with_supervisor()
    uvloop = os.environ.get("DAGSERVE_UVLOOP", "1") == "1"
    try:
        anyio.run(_serve_until_signalled, options, role, backend_options={"use_uvloop": uvloop})
    except Exception as exc:  # startup failures come wrapped in task groups
        config_error = _find(exc, ConfigError)
        if config_error is not None:
            print(f"dagserve: {config_error}", file=sys.stderr)
            return 2
        os_error = _find(exc, OSError)
        if os_error is not None:  # e.g. a port taken after the check above
            print(f"dagserve: cannot listen: {os_error} (HTTP {_show(options.http_port)}, "
                  f"gRPC {_show(options.grpc_port)}, metrics {_show(options.metrics_port)} on {options.host}; "
                  "choose free ports with --http-port, --grpc-port, --metrics-port, or 0 for any)", file=sys.stderr)
            return 1
        raise
    _exit_now(0)
    return 0  # not reached


def _serve_options(args: argparse.Namespace) -> FrontendOptions:
    return FrontendOptions(
        server=ServerOptions(
            model_repository=args.model_repository,
            model_control_mode=args.model_control_mode,
            repository_poll_secs=args.repository_poll_secs,
            load_models=tuple(args.load_model if args.load_model is not None
                              else [m for m in (_env("load-model", "") or "").split(",") if m]),
            model_aliases=parse_aliases(args.model_alias if args.model_alias is not None
                                        else [_env("model-alias", "") or ""]),
            strict_readiness=args.strict_readiness,
            auto_complete_config=not args.disable_auto_complete_config,
            python_execution=args.python_execution,
            response_cache_bytes=(args.cache_config or [_cache_config(_env("cache-config", "local,size=0") or "")])[-1],
            trace=parse_trace_config(
                args.trace_config if args.trace_config is not None else (_env("trace-config", "") or "").split()
            ),
            **cli_security.server_options(args),
            **cli_metrics.server_options(args),
        ),
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=cli_metrics.metrics_port(args),
        http_max_body_size=args.http_max_body_size,
        grpc_max_message_size=args.grpc_max_message_size,
        grpc_server=args.grpc_server,
        grpc_infer_response_compression_level=args.grpc_infer_response_compression_level,
        **cli_security.serve_options(args),
        **cli_metrics.serve_options(args),
        exit_timeout_secs=args.exit_timeout_secs,
        http_limits=HttpLimits(**{field: getattr(args, field) for _, field, _, _ in _HTTP_LIMIT_FLAGS}),
        grpc_keepalive=GrpcKeepalive(**{field: getattr(args, "grpc_" + field) for _, field, _ in _GRPC_KEEPALIVE_FLAGS}),
    )


_PORT_FLAGS = (("HTTP", "--http-port", "http_port"), ("gRPC", "--grpc-port", "grpc_port"),
               ("metrics", "--metrics-port", "metrics_port"))


def _busy_port(options: FrontendOptions) -> str | None:
    """Why a port the server would listen on cannot be had (in use, the same port twice, not
    permitted), naming the port and the flag to change; ``None`` when every port is free.

    Each port is bound once with the frontends' own socket options (``SO_REUSEADDR``, no
    ``SO_REUSEPORT``), then released: whatever listens there makes the bind fail. A port taken
    between this check and the frontends' start is still reported, later, as "cannot listen".
    """
    import errno
    import socket

    wanted: dict[tuple[str, int], str] = {}
    for what, flag, field in _PORT_FLAGS:
        port = getattr(options, field)
        if not port:
            continue  # disabled, or 0: any free port
        host = (options.metrics_address or options.host) if field == "metrics_port" else options.host
        if (host, port) in wanted:
            return f"{flag} {port} is also given to {wanted[(host, port)]}; each service needs its own port"
        wanted[(host, port)] = flag
        try:
            family, _, _, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            where = f"{what} port {port} on {host}"
            if exc.errno == errno.EADDRINUSE:
                return (f"{where} is already in use (another dagserve or tritonserver?); stop what listens "
                        f"there (e.g. `ss -ltnp 'sport = :{port}'` shows it), or choose another port with "
                        f"{flag} PORT (0 picks a free one, -1 disables the {what} service)")
            return f"cannot listen on {where}: {exc.strerror or exc}; choose another port with {flag} PORT"
    return None


def _show(port: int | None) -> str:
    return "off" if port is None else str(port)


def _warn_if_empty(repository: Path | None) -> None:
    """Say so when the repository has no model directory: the server would start and serve
    nothing, which is rarely what was meant (a wrong path, or models one level too deep)."""
    if repository is None or not repository.is_dir():
        return  # the server reports a missing repository itself
    if any(c.is_dir() and not c.name.startswith((".", "_")) for c in repository.iterdir()):
        return
    print(f"dagserve: warning: model repository {repository} has no model directories; the server starts "
          f"with no models (expected {repository}/<model>/config.pbtxt or config.yaml, and version "
          f"directories such as {repository}/<model>/1/)", file=sys.stderr, flush=True)


def _exit_now(status: int) -> None:
    """End the process once the server has stopped cleanly: run the ``atexit`` handlers and
    flush, but skip the interpreter's own teardown (freeing every module and grpc's core),
    which took 0.3-2 s and is all an operator would wait for after the drain."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of type ``kind`` inside its (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


async def _serve_until_signalled(options: FrontendOptions, role: WorkerRole | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully (:func:`serve`); a second signal
    exits the process at once with status 128 + the signal's number. As a worker process
    (``role``) it also answers its channel, and leaves what to print to the supervisor; a
    worker ignores a second signal: it may get one from the supervisor and one from whoever
    signalled the whole group (systemd stops a service by signalling every process of its
    cgroup), and an operator's second signal reaches the supervisor, which then kills the
    workers."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            serving = anyio.CancelScope()

            async def watch() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if serving.cancel_called:
                        if role is not None:
                            continue  # already draining (see above)
                        print(f"dagserve: {name} received again, exiting now", flush=True)
                        os._exit(128 + signum)
                    if role is None:
                        print(f"dagserve: {name} received, stopping: finishing requests in flight "
                              f"(at most {options.exit_timeout_secs:g}s; send it again to exit now)", flush=True)
                    serving.cancel()

            async def run(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
                with serving:
                    if role is None:
                        await serve(options, task_status=task_status)
                    else:
                        balance = role.connection_balance()
                        if balance is not None:  # before the frontends: they hand connections to it
                            await tg.start(balance.serve)
                        await serve(options, setup=role.before_serving, peers=role.peers(), balance=balance,
                                    relay=role.grpc_relay() if options.grpc_server == "native" else None,
                                    task_status=task_status)
                tg.cancel_scope.cancel()  # stopped: the signal watcher too

            tg.start_soon(watch)
            try:
                server, addresses = await tg.start(run)
            except RuntimeError:
                if serving.cancel_called:  # a signal during start-up
                    tg.cancel_scope.cancel()
                    return
                raise
            if role is not None:
                await tg.start(serve_forwarding, server, role)
                await tg.start(serve_channel, server, role)
                return
            _announce(server.repository_index(), addresses, options)
    if role is None:
        print("dagserve: stopped", flush=True)


def _announce(models: list[dict[str, Any]], addresses: Addresses, options: FrontendOptions) -> None:
    """Print each model's state and where the server listens (once it does; with
    ``--workers``, the supervisor prints it once every worker is ready)."""
    for model in models:
        state = model["state"] + (f" ({model['reason']})" if model["reason"] and model["state"] != "READY" else "")
        print(f"model {model['name']} version {model['version'] or '-'}: {state}", flush=True)
    if addresses.http:
        scheme = "https" if options.http_tls else "http"  # security: TLS
        print(f"HTTP service listening on {scheme}://{addresses.http}", flush=True)
    if addresses.grpc:
        print(f"gRPC service listening on {addresses.grpc}", flush=True)
    if addresses.metrics:
        print(f"metrics served at http://{addresses.metrics}/metrics", flush=True)


def _validate(repository: Path) -> int:
    """Print every finding, an ``ok:`` line per sound model, and a summary; 1 when any error."""
    from .validation import validate_repository

    try:
        report = validate_repository(repository)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    for model in report.models:
        for finding in model.findings:
            print(finding)
        if model.ok:
            print(f"ok: {model.name} ({model.describe()})")
    print(report.summary())
    return 0 if report.ok else 1


def _graph(repository: Path, name: str, fmt: str, output: Path | None) -> int:
    """Draw pipeline ``name`` as ``fmt``; 1 when the pipeline has errors, 2 for a usage error."""
    from .drawing import pipeline_graph, render, to_dot, to_mermaid
    from .validation import RepositoryValidator

    def fail(message: str, status: int = 2) -> int:
        print(f"dagserve graph: {message}", file=sys.stderr)
        return status

    if fmt == "png" and output is None and sys.stdout.isatty():
        return fail("png is binary: write it to a file with -o FILE")
    try:
        # Python models need not be imported to know a pipeline's tensors: their configs say.
        validator = RepositoryValidator(repository, load_models=False)
    except ConfigError as exc:
        return fail(str(exc))
    if name not in validator.names:
        return fail(f"no model '{name}' in {repository}")
    report = validator.validate(name)
    if not report.is_pipeline:
        pipelines = [n for n in validator.names if validator.validate(n).is_pipeline]
        listed = ", ".join(pipelines) or "none"
        return fail(f"'{name}' is a {report.kind} model, not a pipeline (pipelines: {listed})")
    for finding in report.findings:
        print(finding, file=sys.stderr)
    if report.pipeline is None:
        return fail(f"pipeline '{name}' has errors; fix them first (dagserve validate {repository})", 1)
    graph = pipeline_graph(report.pipeline.spec, report.pipeline.types)
    text = to_mermaid(graph) if fmt == "mermaid" else to_dot(graph)
    try:
        data = text.encode() if fmt in ("mermaid", "dot") else render(text, fmt)
    except DagserveError as exc:
        return fail(str(exc), 1)
    if output is not None:
        output.write_bytes(data)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
