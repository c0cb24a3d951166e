"""Run ``dagserve serve`` as a subprocess on ephemeral ports, for the benchmarks that need a real
server (bench_health.py, soak.py): start it, read the addresses it reports, stop it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerProcess:
    """A running ``dagserve serve``; ``http``, ``grpc`` and ``metrics`` are ``host:port``."""

    proc: subprocess.Popen[str]
    http: str = ""
    grpc: str = ""
    metrics: str = ""
    lines: list[str] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far (Linux /proc): its process and
        the worker processes under it (``--workers``, ``auto`` by default)."""
        return tree_cpu_seconds(self.proc.pid)

    def tree_cpu_seconds(self) -> float:
        """The same for the server and every process under it (``--workers N``)."""
        return tree_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU time every process of this machine has used so far (all cores together), and the
    time the hypervisor gave this machine's virtual cores to others (steal), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of every live process below it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(process_cpu_seconds(p) for p in tree)


def start(repository: Path, *extra: str, ready_timeout: float = 120) -> ServerProcess:
    """Start the server and return once it reports its listening addresses.

    Its output keeps being read (into ``lines``) on a thread, so a chatty log cannot block it.
    """
    cmd = [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(repository),
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    server = ServerProcess(proc)
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line.rstrip())
            if m := re.match(r"HTTP service listening on http://(\S+)", line):
                server.http = m.group(1)
            elif m := re.match(r"gRPC service listening on (\S+)", line):
                server.grpc = m.group(1)
            elif m := re.match(r"metrics served at http://(\S+)/metrics", line):
                server.metrics = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("dagserve did not start:\n" + "\n".join(server.lines[-20:]))
    if not server.metrics:
        proc.kill()
        raise RuntimeError("dagserve exited:\n" + "\n".join(server.lines[-20:]))
    return server
