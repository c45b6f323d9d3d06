"""A job's efficiency figures, from its history's totals (``coordinator.history``) and its GPU-time by
use (``coordinator.usage``): what the job result, ``internvideo report`` and the demo's table show.

Every figure is in base units; a figure that cannot be known is None, never a guess: MFU needs the
devices' peak (a table or ``telemetry.peak_flops``), energy per clip needs clips. The step-time
percentiles come from a histogram of 2 % buckets: within 1 % of the exact ones.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from coordinator.history import HistoryTotals
from coordinator.usage import USES, JobUsage


@dataclass(frozen=True)
class Efficiency:
    gpu_hours: float  # trainers' devices held, over all attempts
    goodput: float | None  # kept step compute / held GPU-time
    lost_gpu_seconds: dict[str, float]  # by use: redone, data_wait, startup, ...
    joules: float  # the trainers' devices
    energy_sources: tuple[str, ...]  # where the joules come from: nvml, rapl, estimate, ...
    productive_joules: float  # of kept steps
    joules_per_clip: float | None  # all the job's energy / the clips of the steps its checkpoints kept
    watts_per_device: float | None  # joules / held GPU-seconds
    mfu: float | None  # model FLOPs / (step time x workers x peak), over executed steps
    peak: str  # where the peak came from: a device of the table, "configured", "unknown"
    flop_per_joule: float | None
    data_wait_fraction: float | None  # step time spent waiting for clips
    step_seconds_p50: float | None
    step_seconds_p95: float | None
    clips_per_second: float | None

    def as_metrics(self) -> dict[str, float]:
        """The numeric figures, flat (for the job result's metrics map)."""
        flat: dict[str, float] = {}
        for name, value in asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{name}_{use}": v for use, v in value.items()})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[name] = float(value)
        return flat


def job_efficiency(totals: HistoryTotals, usage: JobUsage | None, global_batch: int | None) -> Efficiency:
    """``totals``: the job's history summed (the store keeps them). ``global_batch``: a training job's;
    None for an evaluation (its kept clips are its committed shards')."""
    usage = usage or JobUsage({}, 0.0)
    seconds, flops = totals.seconds, totals.model_flops
    kept_clips = kept_samples(totals, global_batch)
    mfu, peak = _mfu(totals)
    held, joules = usage.held_gpu_seconds, usage.joules
    return Efficiency(
        gpu_hours=held / 3600.0,
        goodput=usage.goodput,
        lost_gpu_seconds={use: usage.of(use).gpu_seconds for use in USES if use != "kept"},
        joules=joules,
        energy_sources=tuple(totals.energy_sources),
        productive_joules=usage.of("kept").joules,
        joules_per_clip=joules / kept_clips if kept_clips and joules else None,
        watts_per_device=joules / held if held and joules else None,
        mfu=mfu, peak=peak,
        flop_per_joule=flops / joules if joules and flops else None,
        data_wait_fraction=totals.wait_seconds / seconds if seconds else None,
        step_seconds_p50=totals.step_times.percentile(50),
        step_seconds_p95=totals.step_times.percentile(95),
        clips_per_second=totals.samples / seconds if seconds else None)


def kept_samples(totals: HistoryTotals, global_batch: int | None) -> int:
    """The samples whose compute the job keeps: those of the steps its furthest checkpoint holds, or of
    an evaluation's committed shards (a shard committed twice, by runners racing a restart, counts once)."""
    if global_batch is None:
        return sum(totals.shard_samples.values())
    return totals.checkpointed_step * global_batch


def _mfu(totals: HistoryTotals) -> tuple[float | None, str]:
    """Model FLOPs over what the devices could have done during the steps. Each attempt's steps are
    measured against that attempt's devices; unknown if any attempt's peak is."""
    if not totals.attempts or not totals.steps or totals.unknown_peak:
        return None, "unknown"
    # Steps carry their world size; the devices of a world size are the latest attempt's of that size.
    possible = sum(seconds * totals.peak_of_world.get(world, 0.0) for world, seconds in totals.seconds_by_world.items())
    return (totals.model_flops / possible if possible else None), ", ".join(totals.peaks)
