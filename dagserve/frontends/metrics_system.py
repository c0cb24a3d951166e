"""CPU and GPU gauges for ``/metrics``, polled every ``--metrics-interval-ms`` as Triton does.

CPU (``--allow-cpu-metrics``): ``nv_cpu_utilization`` from ``/proc/stat`` (busy share of all
cores since the previous poll), ``nv_cpu_memory_total_bytes`` / ``nv_cpu_memory_used_bytes``
from ``/proc/meminfo`` (used = MemTotal - MemAvailable), exactly as Triton computes them.

GPU (``--allow-gpu-metrics``): through NVML (the optional ``nvidia-ml-py`` package, imported
when the endpoint starts, ``pip install dagserve[gpu-metrics]``), per CUDA-visible GPU with
Triton's ``gpu_uuid`` label: ``nv_gpu_utilization``, ``nv_gpu_memory_total_bytes``,
``nv_gpu_memory_used_bytes``, ``nv_gpu_power_usage``, ``nv_gpu_power_limit`` and
``nv_energy_consumption`` (joules since the server started). Triton reads these from DCGM;
NVML is what DCGM reads them from.

Pinned memory (always, as on Triton): ``nv_pinned_memory_pool_total_bytes`` and
``nv_pinned_memory_pool_used_bytes``. dagserve has no pool of its own: the page-locked host
memory it uses (staging a batch for a GPU model, copying GPU outputs to host) comes from
torch's caching host allocator, so these report that allocator's bytes (held, and handed out
now) once torch has initialized CUDA in this process, and 0 before that or without torch —
what Triton reports with ``--pinned-memory-pool-byte-size=0``. Reading them never imports
torch nor initializes CUDA.

Whatever cannot be read (no ``/proc``, no NVML, no GPU, one value a GPU does not report) is
absent from the output and logged once at start; it is never an error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .metrics_text import sample

__all__ = ["SystemMetrics", "cpu_times", "cpu_utilization", "memory", "pinned_memory"]

log = logging.getLogger("dagserve.metrics")

Family = Callable[[str, str, str, Iterable[str]], None]

_PROC = Path("/proc")


def cpu_times(proc: Path = _PROC) -> tuple[int, int]:
    """(busy, idle) jiffies of all cores from ``/proc/stat``'s aggregate line: busy is user +
    nice + system + irq + softirq + steal, idle is idle + iowait (Triton's split).

    Raises:
        OSError: the file cannot be read; ValueError: it has no aggregate ``cpu`` line.
    """
    with open(proc / "stat") as f:
        line = f.readline()
    if not line.startswith("cpu "):
        raise ValueError("Failed to find aggregate CPU info in /proc/stat.")
    fields = [int(x) for x in line.split()[1:]]
    fields += [0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, idle + iowait


def cpu_utilization(new: tuple[int, int], old: tuple[int, int]) -> float:
    """The busy share of the time between two :func:`cpu_times` readings, in [0, 1]."""
    busy = max(new[0] - old[0], 0)
    idle = max(new[1] - old[1], 0)
    return busy / (busy + idle) if busy + idle else 0.0


def memory(proc: Path = _PROC) -> tuple[int, int]:
    """(total, used) bytes of RAM from ``/proc/meminfo``: used = MemTotal - MemAvailable.

    Raises:
        OSError: unreadable; ValueError: MemTotal or MemAvailable missing or inconsistent.
    """
    values: dict[str, int] = {}
    with open(proc / "meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name.strip()] = int(parts[0]) * 1024
    if "MemTotal" not in values or "MemAvailable" not in values:
        raise ValueError("Failed to find desired values in /proc/meminfo.")
    if values["MemAvailable"] > values["MemTotal"]:
        raise ValueError("Available bytes shouldn't be greater than Total bytes")
    return values["MemTotal"], values["MemTotal"] - values["MemAvailable"]


def pinned_memory() -> tuple[int, int]:
    """(total, used) bytes of page-locked host memory held by torch's caching host allocator:
    (0, 0) when torch is not imported, has not initialized CUDA, or cannot say.

    Where torch reports ``reserved_bytes`` it is the pool (held) and ``allocated_bytes`` what is
    handed out; torch 2.11 reports ``allocated_bytes`` (the pool) and ``active_bytes`` (handed
    out), the latter measured above the former at times on the H200.
    """
    torch = sys.modules.get("torch")  # never imported here: only a process using torch has any
    if torch is None:
        return 0, 0
    try:
        if not torch.cuda.is_initialized():
            return 0, 0
        stats = torch.cuda.host_memory_stats()
    except Exception as exc:  # noqa: BLE001 - an old torch, a CPU build: nothing to report
        log.debug("pinned memory: %s", exc)
        return 0, 0
    if "reserved_bytes.current" in stats:  # reserved: the pool (used and free); allocated: in use
        return int(stats["reserved_bytes.current"]), int(stats.get("allocated_bytes.current", 0))
    # torch 2.11: allocated_bytes is the pool, active_bytes what is in use; measured on the
    # H200, active_bytes can read above allocated_bytes, so the pool is the larger of the two.
    allocated, active = int(stats.get("allocated_bytes.current", 0)), int(stats.get("active_bytes.current", 0))
    return max(allocated, active), active


class _Gpu:
    def __init__(self, handle: Any, uuid: str) -> None:
        self.handle = handle
        self.uuid = uuid
        self.values: dict[str, float] = {}
        self.first_energy_mj: int | None = None


_GPU_FAMILIES = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge"),
    ("nv_gpu_power_usage", "GPU power usage in watts", "gauge"),
    ("nv_gpu_power_limit", "GPU power management limit in watts", "gauge"),
    ("nv_energy_consumption", "GPU energy consumption in joules since the Triton Server started", "counter"),
)


class SystemMetrics:
    """The last polled CPU/GPU values. :meth:`start`, :meth:`poll` and :meth:`close` block
    (file reads, NVML calls): run them in a worker thread; :meth:`render` reads under a lock."""

    def __init__(self, *, cpu: bool, gpu: bool, proc: Path = _PROC) -> None:
        self._want_cpu = cpu
        self._want_gpu = gpu
        self._proc = proc
        self._lock = threading.Lock()
        self._cpu_last: tuple[int, int] | None = None
        self._cpu: dict[str, float] = {}
        self._nvml: Any = None
        self._gpus: list[_Gpu] = []
        self._pinned = (0, 0)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the CPU baseline and find the GPUs, then poll once."""
        if self._want_cpu:
            try:
                self._cpu_last = cpu_times(self._proc)
                memory(self._proc)
            except (OSError, ValueError) as exc:
                log.warning("CPU metrics will not be available: %s", exc)
                self._want_cpu = False
        if self._want_gpu:
            self._start_nvml()
        self.poll()

    def _start_nvml(self) -> None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            log.info("GPU metrics need NVML: pip install 'dagserve[gpu-metrics]' (nvidia-ml-py)")
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError_* (no driver, no GPU)
            log.info("GPU metrics will not be available: NVML: %s", exc)
            return
        self._nvml = nvml
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                if _cuda_visible(index, uuid):
                    self._gpus.append(_Gpu(handle, uuid))
        except Exception as exc:  # noqa: BLE001
            log.warning("GPU metrics will not be available: NVML: %s", exc)
            self._gpus = []
        if self._gpus:
            log.info("Collecting metrics for GPU %s", ", ".join(g.uuid for g in self._gpus))

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001, S110 - nothing to do about it at exit
                pass
            self._nvml = None

    # -- polling --------------------------------------------------------------------------------
    def poll(self) -> None:
        cpu: dict[str, float] = {}
        if self._want_cpu:
            try:
                now = cpu_times(self._proc)
                if self._cpu_last is not None:
                    cpu["nv_cpu_utilization"] = cpu_utilization(now, self._cpu_last)
                self._cpu_last = now
                total, used = memory(self._proc)
                cpu["nv_cpu_memory_total_bytes"] = float(total)
                cpu["nv_cpu_memory_used_bytes"] = float(used)
            except (OSError, ValueError) as exc:
                log.debug("CPU metrics: %s", exc)
        gpus = {g.uuid: self._read_gpu(g) for g in self._gpus}
        pinned = pinned_memory()
        with self._lock:
            self._cpu = cpu
            self._pinned = pinned
            for g in self._gpus:
                g.values = gpus[g.uuid]

    def _read_gpu(self, gpu: _Gpu) -> dict[str, float]:
        nvml, handle = self._nvml, gpu.handle
        values: dict[str, float] = {}

        def read(name: str, call: Callable[[], float]) -> None:
            try:
                values[name] = float(call())
            except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported and friends: leave it out
                log.debug("GPU %s: %s: %s", gpu.uuid, name, exc)

        read("nv_gpu_utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
        read("nv_gpu_memory_total_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total)
        read("nv_gpu_memory_used_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used)
        read("nv_gpu_power_usage", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        read("nv_gpu_power_limit", lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000)

        def energy() -> float:
            total_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            if gpu.first_energy_mj is None:
                gpu.first_energy_mj = total_mj
            return (total_mj - gpu.first_energy_mj) / 1000

        read("nv_energy_consumption", energy)
        return values

    # -- reading --------------------------------------------------------------------------------
    def render(self, family: Family) -> None:
        """Hand each family with values to ``family(name, help, type, samples)``."""
        with self._lock:
            cpu = dict(self._cpu)
            gpus = [(g.uuid, dict(g.values)) for g in self._gpus]
            pinned_total, pinned_used = self._pinned
        for name, doc in (("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]"),
                          ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes"),
                          ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes")):
            if name in cpu:
                family(name, doc, "gauge", [sample(name, {}, cpu[name])])
        for name, doc, kind in _GPU_FAMILIES:
            family(name, doc, kind, [sample(name, {"gpu_uuid": uuid}, v[name]) for uuid, v in gpus if name in v])
        for name, doc, number in (
            ("nv_pinned_memory_pool_total_bytes", "Pinned memory pool total memory size, in bytes", pinned_total),
            ("nv_pinned_memory_pool_used_bytes", "Pinned memory pool used memory size, in bytes", pinned_used),
        ):
            family(name, doc, "gauge", [sample(name, {}, float(number))])


def _cuda_visible(index: int, uuid: str) -> bool:
    """Triton reports the GPUs CUDA can see: ``CUDA_VISIBLE_DEVICES`` by index or UUID (prefix)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return True
    for item in (v.strip() for v in visible.split(",")):
        if item.isdigit() and int(item) == index:
            return True
        if item and not item.isdigit() and uuid.startswith(item if item.startswith("GPU-") else "GPU-" + item):
            return True
    return False
