"""Energy meters on fake NVML and fake RAPL sysfs files (wrap-around included), and the estimate."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from workers.energy import (
    DEFAULT_WATTS_PER_CPU,
    DeclaredPower,
    NodeEnergy,
    NvmlEnergy,
    RaplEnergy,
    cpu_worker_meter,
    gpu_meter,
)


class FakeNvml:
    """The slice of nvidia-ml-py a meter calls; ``energy_mj`` None: the counter is not supported."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj: int | None = 1_000_000, power_mw: int = 250_000) -> None:
        self.energy_mj, self.power_mw = energy_mj, power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        if self.energy_mj is None:
            raise self.NVMLError("Not Supported")
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self.power_mw


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def write_zone(folder: Path, name: str, energy_uj: int, max_uj: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "name").write_text(f"{name}\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")


def set_energy(folder: Path, energy_uj: int) -> None:
    (folder / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def rapl(tmp_path: Path) -> Path:
    """One package with core and DRAM sub-zones, and a second package without DRAM."""
    write_zone(tmp_path / "intel-rapl:0", "package-0", 900, 1000)
    write_zone(tmp_path / "intel-rapl:0" / "intel-rapl:0:0", "core", 10, 1000)
    write_zone(tmp_path / "intel-rapl:0" / "intel-rapl:0:1", "dram", 500, 2000)
    write_zone(tmp_path / "intel-rapl:1", "package-1", 0, 1000)
    return tmp_path


def test_nvml_counter_is_read_as_a_difference_from_the_start() -> None:
    nvml = FakeNvml(energy_mj=5_000_000)
    meter = NvmlEnergy(nvml, handle=object(), index="3")
    nvml.energy_mj += 1_500
    (reading,) = meter.read()
    assert (reading.device, reading.index, reading.source) == ("gpu", "3", "nvml")
    assert reading.joules == pytest.approx(1.5)


def test_nvml_without_the_counter_integrates_power() -> None:
    nvml = FakeNvml(energy_mj=None, power_mw=200_000)  # 200 W
    began = time.monotonic()
    meter = NvmlEnergy(nvml, handle=object(), index="0", interval_s=0.01)
    time.sleep(0.3)
    (reading,) = meter.read()
    elapsed = time.monotonic() - began
    meter.close()
    assert reading.source == "nvml_power"
    # Integrated up to the last sample: an interval (plus a loaded machine's scheduling) short of 200 W x elapsed.
    assert 200 * (elapsed - 0.25) <= reading.joules <= 200 * elapsed


def test_rapl_reads_packages_and_dram_and_survives_wrap_around(rapl: Path) -> None:
    meter = RaplEnergy(rapl)
    assert [(r.device, r.index, r.source, r.joules) for r in meter.read()] == [
        ("cpu", "package-0", "rapl", 0.0), ("dram", "package-0", "rapl", 0.0), ("cpu", "package-1", "rapl", 0.0)]
    set_energy(rapl / "intel-rapl:0", 950)  # +50 uJ
    set_energy(rapl / "intel-rapl:0" / "intel-rapl:0:1", 1900)  # +1400 uJ
    set_energy(rapl / "intel-rapl:1", 300)
    assert [r.joules * 1e6 for r in meter.read()] == pytest.approx([50, 1400, 300])
    # package-0 wraps at 1000: 950 → 1000 → 0 → 120 is 170 uJ; DRAM wraps at 2000: 1900 → 100 is 200 uJ.
    set_energy(rapl / "intel-rapl:0", 120)
    set_energy(rapl / "intel-rapl:0" / "intel-rapl:0:1", 100)
    assert [r.joules * 1e6 for r in meter.read()] == pytest.approx([220, 1600, 300])


def test_rapl_without_zones_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no RAPL zones"):
        RaplEnergy(tmp_path)


def test_declared_power_is_watts_times_time_and_labelled_an_estimate() -> None:
    meter = cpu_worker_meter(cpus=2, declared_watts=None)
    began = time.monotonic()
    time.sleep(0.05)
    (reading,) = meter.read()
    elapsed = time.monotonic() - began
    assert (reading.device, reading.source) == ("cpu", "estimate")
    assert 2 * DEFAULT_WATTS_PER_CPU * 0.05 <= reading.joules <= 2 * DEFAULT_WATTS_PER_CPU * (elapsed + 0.01)
    with pytest.raises(ValueError, match=">= 0 W"):
        DeclaredPower("gpu", "0", -1.0)


def test_one_process_per_node_exports_rapl(rapl: Path, tmp_path: Path) -> None:
    lock = tmp_path / "node.lock"
    first = NodeEnergy("node-a", lock, root=rapl, poll_s=0.05).start()
    second = NodeEnergy("node-a", lock, root=rapl, poll_s=0.05)
    try:
        wait_for(lambda: first.holder)
        second.start()
        time.sleep(0.2)  # several of its polls
        assert first.holder and not second.holder
        set_energy(rapl / "intel-rapl:1", 400)
        (family,) = first.collect()
        samples = {(s.labels["device"], s.labels["index"]): s.value for s in family.samples}
        assert samples[("cpu", "package-1")] == pytest.approx(400e-6)
        assert all(s.labels["source"] == "rapl" and s.labels["node"] == "node-a" for s in family.samples)
        assert [list(f.samples) for f in second.collect()] == [[]]
        first.stop()  # the holder exits: the other process takes the node over
        wait_for(lambda: second.holder)
    finally:
        first.stop()
        second.stop()


def test_a_gpu_nvml_cannot_read_is_declared_power_or_unknown_never_a_guess() -> None:
    # No NVIDIA driver on this machine: NVML cannot be initialised.
    (reading,) = gpu_meter("0", declared_watts=300.0).read()
    assert (reading.device, reading.source) == ("gpu", "estimate")
    assert gpu_meter("0", declared_watts=None).read() == []


def test_power_integration_needs_power_readings() -> None:
    class NoPower(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
            raise self.NVMLError("Not Supported")

    with pytest.raises(FakeNvml.NVMLError):  # gpu_meter falls back on this, instead of reporting 0 J
        NvmlEnergy(NoPower(energy_mj=None), handle=object(), index="0")
