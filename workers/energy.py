"""Energy meters: one interface, three sources, every figure labelled with the one it came from.

- ``nvml``: a GPU's total-energy counter (NVML, Volta and later), read as a difference from the
  meter's start; ``nvml_power``: where that counter is missing, NVML's power reading integrated
  over time by a sampling thread.
- ``rapl``: the CPU package and DRAM counters of the node (``/sys/class/powercap``), which wrap
  around at ``max_energy_range_uj``: each read adds the difference since the last one, so the meter
  must be read more often than a counter can wrap (minutes at full power) — ``NodeEnergy`` polls.
  RAPL measures the whole node, so one process per node reads it (a lock file decides which).
- ``estimate``: declared watts times the time elapsed, where nothing can be measured (a CPU-only
  worker, or a GPU whose NVML cannot be read).

Zeus (ml-energy/zeus) reads the same counters; we read them directly because it would bring pandas
and scikit-learn into every worker for three file reads and two NVML calls.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

log = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")
# What a CPU core draws under load when nothing says otherwise: a server part's TDP over its cores
# (a 64-core 280 W part is 4.4 W; a desktop 8-core 125 W part, 16 W). An estimate, labelled so.
DEFAULT_WATTS_PER_CPU = 10.0


@dataclass(frozen=True)
class EnergyReading:
    """Joules one device used since its meter started."""

    device: str  # "gpu" | "cpu" | "dram"
    index: str  # which one of the node's: "0", "package-0", ...
    source: str  # "nvml" | "nvml_power" | "rapl" | "estimate"
    joules: float


class EnergyMeter(Protocol):
    def read(self) -> list[EnergyReading]:
        """Every device's joules since the meter started (non-decreasing)."""


class DeclaredPower:
    """``watts`` declared for a device, times the seconds since the meter started."""

    def __init__(self, device: str, index: str, watts: float) -> None:
        if watts < 0:
            raise ValueError(f"declared power must be >= 0 W, got {watts}")
        self.device, self.index, self.watts = device, index, watts
        self._start = time.monotonic()

    def read(self) -> list[EnergyReading]:
        return [EnergyReading(self.device, self.index, "estimate", self.watts * (time.monotonic() - self._start))]


class NvmlEnergy:
    """One GPU through NVML (``nvidia-ml-py``): the total-energy counter (millijoules), else power
    (milliwatts) sampled every ``interval_s`` and integrated by the trapezoid rule."""

    def __init__(self, nvml: Any, handle: Any, index: str, interval_s: float = 0.1) -> None:
        self.nvml, self.handle, self.index = nvml, handle, index
        try:
            self._start_mj = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self.source = "nvml"
        except nvml.NVMLError:  # before Volta, or not exposed: integrate power
            self.source = "nvml_power"
            # Read once here: a device without power readings either (a MIG slice) fails now, so the
            # caller falls back, rather than a thread dying later and 0 J passing for a measurement.
            first = (time.monotonic(), nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
            self._joules = 0.0
            self._lock = threading.Lock()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._integrate, args=(interval_s, first), daemon=True,
                                            name=f"nvml-power-{index}")
            self._thread.start()

    def _integrate(self, interval_s: float, first: tuple[float, float]) -> None:
        last_t, last_w = first
        while not self._stop.wait(interval_s):
            now, watts = time.monotonic(), self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            with self._lock:
                self._joules += 0.5 * (watts + last_w) * (now - last_t)
            last_t, last_w = now, watts

    def read(self) -> list[EnergyReading]:
        if self.source == "nvml":
            joules = (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self._start_mj) / 1000.0
        else:
            with self._lock:
                joules = self._joules
        return [EnergyReading("gpu", self.index, self.source, joules)]

    def close(self) -> None:
        if self.source == "nvml_power":
            self._stop.set()
            self._thread.join(timeout=1.0)


class UnknownEnergy:
    """Nothing could be read and no power was declared: no figure at all, rather than a guess."""

    def read(self) -> list[EnergyReading]:
        return []


class RaplZone:
    """One RAPL counter (``energy_uj``), unwrapped: each read adds the difference since the last."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = (folder / "name").read_text().strip()
        self.max_uj = int((folder / "max_energy_range_uj").read_text())
        self._last = self._raw()
        self._total_uj = 0

    def _raw(self) -> int:
        return int((self.folder / "energy_uj").read_text())

    def joules(self) -> float:
        raw = self._raw()
        # A smaller value than last time: the counter passed max_energy_range_uj and started over.
        self._total_uj += raw - self._last if raw >= self._last else raw + self.max_uj - self._last
        self._last = raw
        return self._total_uj / 1e6


class RaplEnergy:
    """The node's CPU packages and their DRAM through RAPL's powercap files."""

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        packages = sorted(root.glob("intel-rapl:[0-9]*"), key=lambda p: p.name)
        packages = [p for p in packages if p.name.count(":") == 1]
        if not packages:
            raise FileNotFoundError(f"no RAPL zones under {root}")
        self.zones: list[tuple[str, str, RaplZone]] = []
        for package in packages:
            zone = RaplZone(package)
            if zone.name.startswith("package"):
                self.zones.append(("cpu", zone.name, zone))
            for sub in sorted(package.glob(f"{package.name}:*")):
                sub_zone = RaplZone(sub)
                if sub_zone.name == "dram":  # core and uncore are parts of the package's figure
                    self.zones.append(("dram", zone.name, sub_zone))

    def read(self) -> list[EnergyReading]:
        return [EnergyReading(device, index, "rapl", zone.joules()) for device, index, zone in self.zones]


def gpu_meter(physical_index: str, declared_watts: float | None) -> EnergyMeter:
    """The meter of one GPU: NVML, else its declared power, else none (its energy is unknown)."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByUUID(physical_index) if physical_index.startswith(("GPU-", "MIG-"))
                  else pynvml.nvmlDeviceGetHandleByIndex(int(physical_index)))
        return NvmlEnergy(pynvml, handle, physical_index)
    except Exception as err:  # noqa: BLE001 — no driver, no library, no permission: estimate instead
        if declared_watts is None:
            log.warning("GPU %s: NVML cannot be read (%s) and telemetry.declared_watts is not set: its energy is "
                        "unknown", physical_index, err)
            return UnknownEnergy()
        log.warning("GPU %s: NVML cannot be read (%s); energy estimated at %s W", physical_index, err, declared_watts)
        return DeclaredPower("gpu", physical_index, declared_watts)


def cpu_worker_meter(cpus: int, declared_watts: float | None) -> EnergyMeter:
    """A CPU-only worker's share of its node cannot be measured (RAPL counts the whole package):
    its declared power, by default ``DEFAULT_WATTS_PER_CPU`` per CPU it holds."""
    return DeclaredPower("cpu", "worker", declared_watts if declared_watts is not None else cpus * DEFAULT_WATTS_PER_CPU)


class NodeEnergy(Collector):
    """Exports the node's RAPL counters as ``internvideo_node_energy_joules_total`` from exactly one
    process per node: whoever holds ``lock_path``; the others retry, so that when the holder exits,
    another process takes over (its counter starts from zero, which ``rate`` reads as a reset)."""

    def __init__(self, node: str, lock_path: Path, root: Path = RAPL_ROOT, poll_s: float = 5.0) -> None:
        self.node, self.lock_path, self.root, self.poll_s = node, lock_path, root, poll_s
        self._meter: RaplEnergy | None = None
        self._lock = threading.Lock()  # the poller and scrapes both read: each difference counted once
        self._lock_file = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="node-energy")

    def start(self) -> "NodeEnergy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_s + 1)
        if self._lock_file is not None:
            self._lock_file.close()

    @property
    def holder(self) -> bool:
        return self._meter is not None

    def _try_hold(self) -> bool:
        lock_file = open(self.lock_path, "a+")  # noqa: SIM115 — held open for as long as the lock is
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return False
        self._lock_file = lock_file
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._meter is None and self._try_hold():
                try:
                    self._meter = RaplEnergy(self.root)
                except (OSError, ValueError) as err:  # no RAPL, or not readable: nothing to export here
                    log.info("node %s: no RAPL energy (%s)", self.node, err)
                    return
            if self._meter is not None:
                with self._lock:
                    self._meter.read()  # often enough not to miss a wrap-around between scrapes
            self._stop.wait(self.poll_s)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("internvideo_node_energy_joules", "Energy of a node's CPU packages and DRAM "
                                     "since the exporting process started", labels=["node", "device", "index", "source"])
        if self._meter is not None:
            with self._lock:
                readings = self._meter.read()
            for r in readings:
                family.add_metric([self.node, r.device, r.index, r.source], r.joules)
        yield family


_node_energy: NodeEnergy | None = None


def export_node_energy(node: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Start this process's bid to export its node's RAPL counters into ``registry`` (once per process)."""
    global _node_energy
    if _node_energy is None:
        # Overridable where sysfs is mounted elsewhere (a container) and for drills on fake counters.
        root = Path(os.environ.get("INTERNVIDEO_RAPL_ROOT", str(RAPL_ROOT)))
        lock = Path(os.environ.get("INTERNVIDEO_NODE_ENERGY_LOCK", f"/tmp/internvideo-node-energy-{os.getuid()}.lock"))
        _node_energy = NodeEnergy(node, lock, root).start()
        registry.register(_node_energy)
