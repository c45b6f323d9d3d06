"""The peak FLOP/s that model FLOPs utilisation divides by: a table of known accelerators, or the
job's configuration — and "unknown" otherwise, never a guess.

Peaks are dense (no 2:4 sparsity) bf16 tensor-core figures from NVIDIA's datasheets, for the
dtype our workers train GPUs in; a worker computing in another dtype has no table entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# (what the device name contains, the table's name for it, dense bf16 FLOP/s); the first match wins,
# so the more specific names come first.
_BF16_PEAKS: tuple[tuple[tuple[str, ...], str, float], ...] = (
    (("H100", "NVL"), "H100 NVL", 835e12),
    (("H100", "PCIE"), "H100 PCIe", 756e12),
    (("H100",), "H100 SXM", 989e12),  # "H100 80GB HBM3", "H100 SXM5"
    (("H200", "NVL"), "H200 NVL", 835e12),
    (("H200",), "H200 SXM", 989e12),
    (("A100",), "A100", 312e12),  # SXM and PCIe alike
    (("GB200",), "GB200", 2500e12),
    (("B200",), "B200", 2250e12),
)


@dataclass(frozen=True)
class DevicePeak:
    """``flops`` None: unknown (no MFU is reported). ``label``: the table's device name,
    "configured", or "unknown"."""

    flops: float | None
    label: str


def device_peak(device_name: str, dtype: torch.dtype, configured: float | None = None) -> DevicePeak:
    """The peak of ``device_name`` (as ``torch.cuda.get_device_name`` says it) computing in ``dtype``;
    ``configured`` (telemetry.peak_flops) wins over the table."""
    if configured is not None:
        return DevicePeak(configured, "configured")
    name = device_name.upper()
    if dtype == torch.bfloat16:
        for needles, label, flops in _BF16_PEAKS:
            if all(needle in name for needle in needles):
                return DevicePeak(flops, label)
    return DevicePeak(None, "unknown")
