"""``dagserve serve --workers N``: one server made of N worker processes behind one set of ports.

One Python process tops out near one core. With ``--workers N`` the ``dagserve`` process
becomes a supervisor: it reserves the ports, starts N worker processes (each a whole
``dagserve serve`` of the same repository with the same flags), restarts one that dies, and
stops them all gracefully on SIGTERM / SIGINT.

* **One set of ports.** Every worker listens on the same HTTP, gRPC and metrics ports with
  ``SO_REUSEPORT``; the kernel spreads new connections over them, and a worker that serves
  more HTTP or gRPC connections than another hands a new one to the one serving the fewest
  (``--worker-balance``, :mod:`dagserve.balance`). A connection, and so a gRPC channel, stays
  with one worker.
* **One answer.** Each worker answers on a Unix socket of its own, in a directory only this
  user can enter (the *channel*, one JSON line per call). A statistics or ``/metrics`` request,
  whichever worker it reaches, is answered with every worker's counts summed; a model load or
  unload, and a change of the log or trace settings, is done by every worker before it is
  answered (:class:`~dagserve.engine.Server.peers`).
* **Supervision.** A worker that dies is started again (its in-flight requests fail with their
  connection; the others go on); in explicit mode it loads what the others have loaded. A
  worker that fails to start stops the server with its exit status.
* **Graceful stop.** The first signal is passed to every worker, which drains as a single
  server does (docs/operations.md); the second ends them at once.

* **Placement.** A model placed ``replicate`` (the default for Python models) is loaded by
  every worker (memory × N, dynamic batches per worker); one placed ``one`` (the default for a
  sequence batcher, a ``KIND_GPU`` instance group or a framework backend: PyTorch, ONNX
  Runtime, TensorRT, FIL) only by worker 0, to which the others forward its requests
  (:func:`serve_forwarding`, :class:`~dagserve.engine.peers.ForwardRunner`;
  :func:`~dagserve.engine.peers.placement` says why); their large tensors cross in shared
  memory, CUDA tensors by CUDA IPC (:mod:`dagserve.forwarding`).
* **Spreading** (``--worker-spread true``). A worker more than twice as busy as another hands
  new requests for replicated models to it through the same socket
  (:class:`~dagserve.engine.peers.Spread`), so that a client multiplexing calls on one
  connection (a gRPC channel) still reaches every worker.

The response cache is per worker. See docs/architecture.md ("Processes") and
docs/performance.md for the figures.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from . import errors
from .balance import ConnectionBalance, shared_counts
from .engine import Server
from .engine.peers import Emit, PeerLostError, PeerUnreachableError
from .forwarding import SHM_MIN_BYTES, Connection, Frame, Received, Tensor, remove_buffers
from .frontends.metrics import render_metrics
from .frontends.runner import Addresses, FrontendOptions, format_address
from .frontends.tracing import trace_setting
from .log_settings import log_control
from .types import DataType, InferRequest, InferResponse

if TYPE_CHECKING:
    from .frontends.grpc_native.relay import Relay

__all__ = ["WorkerRole", "auto_workers", "cpu_quota", "relay_by_default", "serve_channel", "serve_forwarding", "supervise"]

log = logging.getLogger("dagserve.workers")

_ENV_INDEX = "DAGSERVE_WORKER_INDEX"
_ENV_COUNT = "DAGSERVE_WORKER_COUNT"
_ENV_DIR = "DAGSERVE_WORKER_DIR"
_ENV_RESTART = "DAGSERVE_WORKER_RESTARTED"
_MAX_ANSWER = 256 * 1024 * 1024  # a /metrics text of many models; statistics are far smaller
_CONTROL_OPS = ("load", "unload")  # may take as long as a model load; others answer at once
_QUERY_TIMEOUT = 30.0


def auto_workers() -> int:
    """``--workers auto``, the default: one worker per core this process may run on (its CPU
    affinity; 1 on a 1-core machine, which then runs as one process), and no more than its
    cgroup's CPU quota rounded up (:func:`cpu_quota`: a container's CPU limit, which the
    affinity does not show). On 16 cores, 16 workers served the three-step ensemble at
    29,545 req/s (HTTP c64, default execution), one process at 1,286 (docs/performance.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def relay_by_default(count: int) -> bool:
    """``--worker-relay auto``: relay gRPC calls between ``count`` workers unless they outnumber
    the cores this process may use (:func:`auto_workers`). A worker that runs no call then need
    not have a core to run one: 16 workers on a 2-core machine served gRPC c16 at 871 req/s
    with the relay and 1,476 without (docs/performance.md)."""
    return count <= auto_workers()


def cpu_quota(root: Path = Path("/sys/fs/cgroup"), cgroups: str | None = None) -> float | None:
    """The CPUs' worth of time per period this process may use by its cgroup's CPU quota (a
    Kubernetes CPU limit, ``docker --cpus``): the least quota of its cgroup and the cgroups
    above it (cgroup v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or
    None when there is none or it cannot be read. ``cgroups``: the text of
    ``/proc/self/cgroup`` (read when None)."""
    if cgroups is None:
        try:
            cgroups = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas: list[float] = []
    for line in cgroups.splitlines():
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # the v2 hierarchy
            quotas += _quotas(root / path.lstrip("/"), root, _v2_quota)
        elif "cpu" in controllers.split(","):  # a v1 hierarchy with the cpu controller
            for mount in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
                # In a container the mount is its own cgroup, whatever path the host names.
                quotas += _quotas(mount / path.lstrip("/"), mount, _v1_quota) or _quotas(mount, mount, _v1_quota)
    return min(quotas, default=None)


def _quotas(directory: Path, top: Path, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas set in ``directory`` and its parents up to ``top`` (empty if it is not there)."""
    if not directory.is_dir():
        return []
    found = []
    for folder in (directory, *directory.parents):
        quota = read(folder)
        if quota is not None:
            found.append(quota)
        if folder == top or top not in folder.parents:
            break
    return found


def _v2_quota(folder: Path) -> float | None:
    try:
        limit, period = (folder / "cpu.max").read_text().split()
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        limit = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return limit / period if limit > 0 and period > 0 else None  # -1: no quota


# -- the worker's side ------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerRole:
    """This process is worker ``index`` of ``count`` (from the supervisor's environment)."""

    index: int
    count: int
    directory: Path
    restarted: bool
    spread: bool = False
    """Hand requests to less busy workers (``--worker-spread``)."""
    shm_min_bytes: int = SHM_MIN_BYTES
    """A forwarded host tensor of at least this many bytes crosses in shared memory
    (``--worker-shm-min-bytes``; :mod:`dagserve.forwarding`)."""
    balance: bool = False
    """Place connections evenly over the workers (``--worker-balance``; :mod:`dagserve.balance`)."""
    relay: bool = False
    """Spread the native gRPC server's calls over the workers (``--worker-relay``;
    :mod:`dagserve.frontends.grpc_native.relay`)."""

    @classmethod
    def from_environment(cls) -> WorkerRole | None:
        if _ENV_INDEX not in os.environ:
            return None
        return cls(
            index=int(os.environ[_ENV_INDEX]),
            count=int(os.environ[_ENV_COUNT]),
            directory=Path(os.environ[_ENV_DIR]),
            restarted=os.environ.get(_ENV_RESTART) == "1",
        )

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    def forward_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.forward.sock"

    def connection_balance(self) -> ConnectionBalance | None:
        """This worker's side of the connection placement, if ``balance`` is on."""
        return ConnectionBalance(self.directory, self.index, self.count) if self.balance and self.count > 1 else None

    def grpc_relay(self) -> Relay | None:
        """This worker's side of the gRPC relay, if ``relay`` is on."""
        if not self.relay or self.count < 2:
            return None
        from .frontends.grpc_native.relay import Relay

        return Relay(self.directory, self.index, self.count, shared_counts(self.directory / "relay", self.count))

    def peers(self) -> UnixPeers:
        return UnixPeers(self)

    def connection(self, stream: anyio.abc.ByteStream) -> Connection:
        """A forwarding connection over ``stream``, its buffers in the private directory."""
        return Connection(stream, self.directory, f"{self.index}-{os.getpid()}", shm_min_bytes=self.shm_min_bytes)

    def end_with_supervisor(self) -> None:
        """Have the kernel send SIGTERM to this process when the supervisor dies (Linux), so a
        supervisor killed outright leaves no worker behind."""
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the supervisor died before that took hold
            os.kill(os.getpid(), signal.SIGTERM)

    async def before_serving(self, server: Server) -> None:
        """Run once this worker has loaded its models, before its frontends start: a
        restarted worker catches up with the others' loads (:meth:`catch_up`); at the
        server's start every worker waits for the others (:meth:`start_together`)."""
        if self.restarted:
            await self.catch_up(server)
        else:
            await self.start_together()

    async def start_together(self) -> None:
        """Wait until every worker has loaded its models, so that they all start listening
        at once.

        A worker that listened as soon as it had loaded would answer health checks for the
        whole server and take every connection opened meanwhile, and a connection stays on
        the worker it lands on (placement acts at accept, among the workers listening then).
        Measured on 16 cores: workers that became ready over a second or more left 5 of the
        16 serving a perf_analyzer run started when the first answered ready (9,800 req/s,
        against 17,558 with all 16). A restarted worker does not wait: the others serve.
        Each worker sets its slot of a file all workers map (``loaded`` in the private
        directory) and polls the others' every 10 ms while it waits.
        """
        loaded = shared_counts(self.directory / "loaded", self.count)
        loaded[self.index] = 1
        if not all(loaded):
            log.info("worker %d: models loaded; waiting for the other workers to load theirs before listening",
                     self.index)
            while not all(loaded):
                await anyio.sleep(0.01)

    async def catch_up(self, server: Server) -> None:
        """A restarted worker in explicit mode loads what the others have loaded since the
        start (loads made with config or file overrides load from the repository here)."""
        if not self.restarted or server.options.model_control_mode != "explicit":
            return
        assert server.peers is not None
        for answer in await server.peers.call("loaded"):
            for name in answer:
                if server.loaded_version(name) is None:
                    with contextlib.suppress(errors.DagserveError):
                        await server.load_model(name, here_only=True)
            return  # one live worker's answer is enough


class UnixPeers:
    """The other workers of this server, reached through their channels
    (:class:`~dagserve.engine.peers.Peers`)."""

    def __init__(self, role: WorkerRole) -> None:
        self._role = role
        self.index = role.index
        self._idle: dict[int, list[Connection]] = {}
        self.loads: MutableSequence[int] | None = (
            shared_counts(role.directory / "loads", role.count) if role.spread else None
        )

    async def forward(
        self, owner: int, model: str, version: str, request: InferRequest, emit: Emit | None = None
    ) -> InferResponse | None:
        """Send ``request`` to worker ``owner``'s forwarding socket on an idle connection (or
        a new one: one request at a time on each) and read its answer; with ``emit``, a
        decoupled model's stream: ``emit(outputs, final)`` for each response, up to the final
        one. Cancelled meanwhile, it closes the connection, which cancels the request there."""
        connection = _idle_connection(self._idle.setdefault(owner, []))
        if connection is None:
            try:
                stream = await anyio.connect_unix(self._role.forward_path(owner))
            except OSError as exc:
                raise PeerUnreachableError(
                    f"model '{model}' is served by worker {owner}, which cannot be reached ({exc.strerror or exc}); "
                    "retry: a worker that died is being started again"
                ) from None
            connection = self._role.connection(stream)
        try:
            # A stream's frames all go through the socket: worker 0 sends its responses
            # without waiting, so it could overwrite a buffer this worker still reads.
            await connection.send(connection.pack(
                {"model": model, "version": version, "id": request.id, "parameters": request.parameters,
                 "stream": emit is not None},
                [(name, request.datatype(name), array) for name, array in request.inputs.items()],
                inline=emit is not None,
            ))
            while True:
                received = await connection.receive()
                header = received.header
                if "error" in header or emit is None or header["final"]:
                    break
                emit(received.take(), False)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            await connection.aclose()
            raise PeerLostError(
                f"model '{model}': worker {owner}, which serves it, closed the connection (it may have died; "
                "retry once it is started again)"
            ) from None
        except BaseException:  # cancelled mid-call: closing tells the owner to cancel it too
            with anyio.CancelScope(shield=True):
                await connection.aclose()
            raise
        self._idle[owner].append(connection)
        if "error" in header:
            raise _error(header["error"])
        outputs = received.take()
        if emit is not None:
            emit(None if header.get("bare") else outputs, True)
            return None
        return InferResponse(
            model_name=model, model_version=version, id=header.get("id", ""),
            outputs=outputs, datatypes={t[0]: DataType(t[1]) for t in header["tensors"]},
        )

    async def others_stopped(self) -> None:
        """Poll the other workers' channels until none accepts a connection any more (a
        worker's channel closes once it has drained and unloaded)."""
        waiting = [i for i in range(self._role.count) if i != self._role.index]
        while waiting:
            still = []
            for index in waiting:
                try:
                    stream = await anyio.connect_unix(self._role.socket_path(index))
                except OSError:
                    continue
                await stream.aclose()
                still.append(index)
            waiting = still
            if waiting:
                await anyio.sleep(0.05)

    async def call(self, op: str, **args: Any) -> list[Any]:
        others = [i for i in range(self._role.count) if i != self._role.index]
        answers: dict[int, Any] = {}
        failures: list[BaseException] = []

        async def ask(index: int) -> None:
            try:
                answers[index] = await _ask(self._role.socket_path(index), op, args)
            except (FileNotFoundError, ConnectionRefusedError):
                log.debug("worker %d is not running (being restarted?): left out of %s", index, op)
            except TimeoutError:  # stopped (SIGSTOP), or its loop is stuck: answer without it
                log.warning("worker %d did not answer '%s' within %gs: left out", index, op, _QUERY_TIMEOUT)
            except errors.DagserveError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for index in others:
                tg.start_soon(ask, index)
        if failures:
            raise failures[0]
        return [answers[i] for i in others if i in answers]


def _idle_connection(idle: list[Connection]) -> Connection | None:
    """An idle connection, preferring one whose last answer nothing views any more (its
    buffer is reused; another's is replaced: see :mod:`dagserve.forwarding`)."""
    for i in range(len(idle) - 1, -1, -1):
        if not idle[i].reading_in_use():
            return idle.pop(i)
    return idle.pop() if idle else None


async def _ask(path: Path, op: str, args: dict[str, Any]) -> Any:
    limit = None if op in _CONTROL_OPS else _QUERY_TIMEOUT
    with anyio.fail_after(limit):
        async with await anyio.connect_unix(path) as stream:
            await stream.send(json.dumps({"op": op, "args": _encode(args)}).encode() + b"\n")
            line = await BufferedByteReceiveStream(stream).receive_until(b"\n", _MAX_ANSWER)
    reply = json.loads(line)
    if "error" in reply:
        raise _error(reply["error"])
    return reply["answer"]


def _error(error: dict[str, str]) -> errors.DagserveError:
    """The error a peer reported, as the same class here."""
    kind = getattr(errors, error["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, errors.DagserveError)):
        kind = errors.InternalError
    return kind(error["message"])


# -- forwarding: requests for a model another worker serves (the frames: dagserve.forwarding) --
async def serve_forwarding(
    server: Server, role: WorkerRole, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Answer the other workers' requests for the models this worker serves for them
    (placement ``one``) on this worker's forwarding socket, until cancelled. A request whose
    connection closes before its answer (the caller was cancelled: a client gone, a deadline)
    is cancelled here too."""
    path = role.forward_path(role.index)
    path.unlink(missing_ok=True)
    remove_buffers(role.directory, role.index)  # left by this worker's previous run, if it was killed

    async def answer(stream: anyio.abc.SocketStream) -> None:
        connection = role.connection(stream)
        try:
            while True:
                try:
                    received = await connection.receive()
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the peer closed it (or died)
                async with anyio.create_task_group() as tg:
                    # The caller sends nothing more on this connection before the answer: any
                    # read that ends means it went away.
                    tg.start_soon(_cancel_on_close, connection, tg.cancel_scope)
                    try:
                        await _run(server, received, connection)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return
                    tg.cancel_scope.cancel()
                if tg.cancel_scope.cancelled_caught and connection.closed:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await connection.aclose()

    listener = await anyio.create_unix_listener(path)
    async with listener:
        task_status.started()
        await listener.serve(answer)


async def _cancel_on_close(connection: Connection, scope: anyio.CancelScope) -> None:
    with contextlib.suppress(Exception):
        await connection.wait_closed()
    connection.closed = True
    scope.cancel()


async def _run(server: Server, received: Received, connection: Connection) -> None:
    """Run one forwarded request and send its answer (or answers, for a stream)."""
    with server.spread.running() if server.spread is not None else contextlib.nullcontext():
        if received.header.get("stream"):
            await _run_stream(server, received, connection)
        else:
            # Made in a call of its own, so that nothing of the request is referenced here any
            # more when the answer is sent: it tells the caller whether its buffer is free.
            await connection.send(await _answer(server, received, connection))


async def _answer(server: Server, received: Received, connection: Connection) -> Frame:
    header = received.header
    try:
        request = _request(received)
        response = await server.infer(header["model"], header["version"], request)
        return connection.pack({"id": response.id, "final": response.final, "bare": not response.outputs},
                               _outputs(response))
    except errors.DagserveError as exc:
        return connection.pack({"error": {"type": type(exc).__name__, "message": str(exc)}}, [])
    except Exception as exc:  # a bug: the caller gets an error, this worker goes on
        log.exception("forwarded request failed")
        return connection.pack({"error": {"type": "InternalError", "message": f"{exc!r}"}}, [])


async def _run_stream(server: Server, received: Received, connection: Connection) -> None:
    header = received.header

    async def emit(response: InferResponse) -> None:
        frame = connection.pack({"id": response.id, "final": response.final, "bare": not response.outputs},
                                _outputs(response), inline=True)
        await connection.send(frame)

    try:
        await server.infer_stream(header["model"], header["version"], _request(received), emit)
        return
    except errors.DagserveError as exc:
        frame = connection.pack({"error": {"type": type(exc).__name__, "message": str(exc)}}, [])
    except Exception as exc:  # a bug: the caller gets an error, this worker goes on
        log.exception("forwarded request failed")
        frame = connection.pack({"error": {"type": "InternalError", "message": f"{exc!r}"}}, [])
    await connection.send(frame)


def _request(received: Received) -> InferRequest:
    specs = received.header["tensors"]
    return InferRequest(
        inputs=received.take(), id=received.header["id"], parameters=received.header["parameters"],
        datatypes={t[0]: DataType(t[1]) for t in specs if t[1] == "BF16"},
    )


def _outputs(response: InferResponse) -> list[Tensor]:
    return [(name, response.datatypes[name], array) for name, array in response.outputs.items()]


def _encode(value: Any) -> Any:
    """JSON for a call's arguments: load parameters may hold bytes (gRPC ``file:`` contents)."""
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: _decode(v) for k, v in value.items()}
    return value


async def serve_channel(
    server: Server, role: WorkerRole, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Answer the supervisor's and the other workers' calls on this worker's Unix socket
    until cancelled."""
    path = role.socket_path(role.index)
    path.unlink(missing_ok=True)  # left by this worker's previous run
    handlers: dict[str, Callable[..., Awaitable[Any]]] = {
        "ready": lambda: _now(server.repository_index()),
        "loaded": lambda: _now([n for n in server.model_names() if server.loaded_version(n) is not None]),
        "statistics": lambda name, version: _now(server.statistics(name, version)),
        "metrics": lambda: _now(render_metrics(server).decode()),
        "load": lambda name, parameters: server.load_model(name, parameters, here_only=True),
        "unload": lambda name, unload_dependents: server.unload_model(name, unload_dependents, here_only=True),
        "log_settings": lambda changes: _now(log_control().update(changes).as_dict()),
        "trace_setting": lambda model, changes: _now(trace_setting(server, model, changes)),
    }

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                line = await BufferedByteReceiveStream(stream).receive_until(b"\n", _MAX_ANSWER)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return  # the caller left before asking (it gave up, or its process is stopping)
            try:
                call = json.loads(line)
                reply: dict[str, Any] = {"answer": await handlers[call["op"]](**_decode(call["args"]))}
            except errors.DagserveError as exc:
                reply = {"error": {"type": type(exc).__name__, "message": str(exc)}}
            except Exception as exc:  # a malformed call from a peer of another version, a bug
                log.exception("worker channel: call failed")
                reply = {"error": {"type": "InternalError", "message": f"worker {role.index}: {exc!r}"}}
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(json.dumps(reply).encode() + b"\n")

    listener = await anyio.create_unix_listener(path)
    async with listener:
        task_status.started()
        await listener.serve(answer)


async def _now(value: Any) -> Any:
    return value


# -- the supervisor's side --------------------------------------------------------------------
Announce = Callable[[list[dict[str, Any]], Addresses, FrontendOptions], None]
"""Prints the banner: the models' states and the addresses (the CLI's)."""
_PORT_FIELDS = (("http_port", "--http-port"), ("grpc_port", "--grpc-port"), ("metrics_port", "--metrics-port"))


def supervise(argv: Sequence[str], options: FrontendOptions, count: int, *, announce: Announce) -> int:
    """Run the server as ``count`` worker processes started with ``argv`` (the ``serve``
    arguments), until SIGTERM / SIGINT; the exit status (0 after a graceful stop). Once every
    worker is ready, ``announce`` prints worker 0's models and the addresses."""
    directory = private_directory()
    held: list[socket.socket] = []
    try:
        ports = {}
        for field, flag in _PORT_FIELDS:
            port = getattr(options, field)
            if port is None:
                continue
            host = (options.metrics_address or options.host) if field == "metrics_port" else options.host
            sock = _hold(host, port)
            held.append(sock)
            ports[flag] = sock.getsockname()[1]
        command = [sys.executable, "-m", "dagserve", *argv, *(a for flag, p in ports.items() for a in (flag, str(p)))]
        return anyio.run(_Supervisor(command, count, directory, options, ports, announce).run)
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(directory, ignore_errors=True)


_SOCKET_PATH_MAX = 107
"""Longest Unix socket path (``sun_path`` holds 108 bytes, its NUL included)."""
_LONGEST_SOCKET_NAME = len("worker-9999.forward.sock")


def private_directory() -> Path:
    """A new directory, mode 0700 (only this user), for the workers' Unix sockets and
    shared buffers: in ``$TMPDIR``, or in ``/tmp`` when ``$TMPDIR``'s path is too long for a
    Unix socket's address in it.

    Raises:
        ConfigError: neither gives a short enough path.
    """
    directory = Path(tempfile.mkdtemp(prefix="dagserve-workers-"))
    if len(os.fsencode(directory)) + 1 + _LONGEST_SOCKET_NAME <= _SOCKET_PATH_MAX:
        return directory
    directory.rmdir()
    short = Path(tempfile.mkdtemp(prefix="dagserve-workers-", dir="/tmp"))
    if len(os.fsencode(short)) + 1 + _LONGEST_SOCKET_NAME <= _SOCKET_PATH_MAX:
        log.info("workers: $TMPDIR (%s) is too long a path for Unix sockets; using %s", directory.parent, short)
        return short
    short.rmdir()
    raise errors.ConfigError(
        f"--workers: the workers' Unix sockets need a directory path of at most "
        f"{_SOCKET_PATH_MAX - 1 - _LONGEST_SOCKET_NAME} bytes; $TMPDIR ({directory.parent}) and /tmp are longer: "
        "set TMPDIR to a shorter directory"
    )


def _hold(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to ``host:port`` with ``SO_REUSEPORT``: it keeps the
    port (a port 0 becomes a free one) for the workers, which bind it too, and from any
    process that does not share it."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class _Supervisor:
    def __init__(
        self, command: list[str], count: int, directory: Path, options: FrontendOptions, ports: dict[str, int],
        announce: Announce,
    ) -> None:
        self.announce = announce
        self.command = command
        self.count = count
        self.directory = directory
        self.options = options
        self.ports = ports
        self.processes: dict[int, anyio.abc.Process] = {}
        self.stopping = False
        self.status = 0
        self.ready = [anyio.Event() for _ in range(count)]
        self.models: list[dict[str, Any]] = []  # worker 0's repository index, once it is ready

    async def run(self) -> int:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals, signals)
                async with anyio.create_task_group() as workers:
                    for index in range(self.count):
                        workers.start_soon(self._keep_running, index)
                    workers.start_soon(self._announce)
                tg.cancel_scope.cancel()
        if self.status == 0:
            print("dagserve: stopped", flush=True)
        return self.status

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping:
                print(f"dagserve: {name} received again, exiting now", flush=True)
                for process in self.processes.values():
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                os._exit(128 + signum)
            print(f"dagserve: {name} received, stopping {self.count} workers: finishing requests in flight "
                  f"(at most {self.options.exit_timeout_secs:g}s; send it again to exit now)", flush=True)
            self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for event in self.ready:
            event.set()  # nothing more to announce
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    async def _keep_running(self, index: int) -> None:
        restarted = False
        while not self.stopping:
            env = {**os.environ, _ENV_INDEX: str(index), _ENV_COUNT: str(self.count),
                   _ENV_DIR: str(self.directory), _ENV_RESTART: "1" if restarted else "0"}
            # A session of its own: a Ctrl-C in the terminal reaches the supervisor only,
            # which passes one SIGTERM on (a worker would take a second signal as "exit now").
            process = await anyio.open_process(self.command, env=env, stdin=subprocess.DEVNULL,
                                               stdout=None, stderr=None, start_new_session=True)
            self.processes[index] = process
            if self.stopping:  # the signal came while it started
                process.send_signal(signal.SIGTERM)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._wait_ready, index)
                status = await process.wait()
                tg.cancel_scope.cancel()
            del self.processes[index]
            if self.stopping:
                if status != 0:
                    self.status = self.status or status
                return
            if not self.ready[index].is_set() and not restarted:
                # It never started: a bad flag, a port, a broken repository. Every worker
                # would fail alike: stop the server with its status (it printed why).
                self.status = status if status > 0 else 1
                self._stop()
                return
            why = f"exited with status {status}" if status >= 0 else f"was killed by {signal.Signals(-status).name}"
            print(f"dagserve: worker {index} (pid {process.pid}) {why}; starting it again", file=sys.stderr, flush=True)
            restarted = True
            await anyio.sleep(0.5)  # a worker that dies at once must not spin the machine

    async def _wait_ready(self, index: int) -> None:
        path = self.directory / f"worker-{index}.sock"
        while True:
            with contextlib.suppress(OSError, errors.DagserveError):
                answer = await _ask(path, "ready", {})
                if index == 0 and not self.ready[0].is_set():
                    self.models = answer
                self.ready[index].set()
                return
            await anyio.sleep(0.05)

    async def _announce(self) -> None:
        for event in self.ready:
            await event.wait()
        if self.stopping:
            return
        pids = ", ".join(str(p.pid) for _, p in sorted(self.processes.items()))
        print(f"dagserve: {self.count} worker processes (pids {pids})", flush=True)
        options, ports = self.options, self.ports
        metrics_host = options.metrics_address or options.host
        self.announce(self.models, Addresses(
            http=format_address(options.host, ports["--http-port"]) if "--http-port" in ports else None,
            grpc=format_address(options.host, ports["--grpc-port"]) if "--grpc-port" in ports else None,
            metrics=format_address(metrics_host, ports["--metrics-port"]) if "--metrics-port" in ports else None,
        ), options)
