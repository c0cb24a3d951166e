"""Hosts made of Linux network namespaces on one bridge, for tests that need separate machines:
each host has its own address and ports, and its link can be cut.

Needs root and iproute2 (``ip netns``); :func:`network` skips the test with the reason
otherwise. Everything it creates (namespaces, veth pairs, the bridge, processes it started)
is removed when the context exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagserve.testing import wait_until

ROOT = Path(__file__).parents[2]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(check=False, args=["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass
class Host:
    """One namespace on the bridge: ``address`` is its IPv4 address."""

    name: str
    namespace: str
    address: str
    veth: str  # the bridge side of its link
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def popen(self, argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[str]:
        """Start ``argv`` inside this host (stopped when the network goes away)."""
        with open(log if log is not None else os.devnull, "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv], stdout=out,
                                    stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                                    start_new_session=True)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(check=False, args=["ip", "netns", "exec", self.namespace, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def dagserve(self, *args: str, log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``dagserve serve ARGS`` of this checkout, inside this host."""
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return self.popen([sys.executable, "-m", "dagserve.cli", "serve", *args], log=log,
                          env={"PYTHONPATH": pythonpath, **(env or {})})

    def wait_ready(self, proc: subprocess.Popen[str], http_port: int, log: Path, timeout: float = 60) -> None:
        """Wait until ``proc`` answers ``/v2/health/ready`` with 200 on this host's address;
        fail with the tail of ``log`` if it exits first."""
        base = f"{self.address}:{http_port}"

        def ready() -> bool:
            assert proc.poll() is None, f"{self.name} exited {proc.returncode}: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://{base}/v2/health/ready", timeout=5) as reply:
                    return reply.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, timeout=timeout, what=f"{self.name} ready on {base} (log: {log})")

    def link(self, up: bool) -> None:
        """Bring this host's link up or down (a cable pulled: packets vanish, nothing is refused)."""
        _ip("link", "set", self.veth, "up" if up else "down")


class Network:
    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge = f"dsb{self.tag}"
        self.hosts: list[Host] = []
        self.prefix = _free_prefix()
        self.gateway = f"{self.prefix}.1"  # the bridge's own address: the test process reaches hosts from it

    def start(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 2
        host = Host(name, f"ds-{self.tag}-{name}", f"{self.prefix}.{index}", f"dsv{self.tag}{index}")
        self.hosts.append(host)
        peer = f"dsp{self.tag}{index}"
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", host.namespace)
        _ip("-n", host.namespace, "link", "set", peer, "name", "eth0")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        return host

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.processes:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGCONT)  # a test may have stopped it
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=30)
            _ip("netns", "del", host.namespace, check=False)  # its veth pair goes with it
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)


def _free_prefix() -> str:
    used = _ip("-4", "addr").stdout + _ip("-4", "route").stdout
    for _ in range(100):
        prefix = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(250) + 1}"
        if f"{prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 for the test network")


def skip_reason() -> str | None:
    """Why network-namespace tests cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    return None


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A fresh bridge to :meth:`Network.add` hosts to; all of it removed on exit. Skips the test
    when namespaces cannot be made here."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    net = Network()
    try:
        try:
            net.start()
            probe = net.add("probe")
        except RuntimeError as exc:
            pytest.skip(f"cannot create network namespaces here: {exc}")
        ping = probe.run(["python3", "-c", "print('ok')"])
        if ping.returncode != 0:
            pytest.skip(f"cannot run a process in a network namespace: {ping.stderr.strip()}")
        yield net
    finally:
        net.close()
