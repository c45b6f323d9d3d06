"""A job's efficiency figures, from its event history and its GPU-time by use (``coordinator.usage``):
what the job result, ``internvideo report`` and the demo's table show.

Every figure is in base units; a figure that cannot be known is None, never a guess: MFU needs the
devices' peak (a table or ``telemetry.peak_flops``), energy per clip needs clips.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from coordinator.store import JobEvent
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


def job_efficiency(events: list[JobEvent], usage: JobUsage | None, global_batch: int | None) -> Efficiency:
    """``global_batch``: a training job's; None for an evaluation (its kept clips are its committed shards')."""
    usage = usage or JobUsage({}, 0.0)
    steps = [e.payload for e in events if e.type == "progress"]
    workers = [e.payload["workers"] for e in events if e.type == "workers"]
    sources = tuple(sorted({s for attempt in workers for w in attempt for s in w["energy_sources"]}))
    seconds = np.array([p["step_seconds"] for p in steps])
    flops = sum(p.get("model_flops", 0.0) for p in steps)
    kept_clips = kept_samples(events, global_batch)
    mfu, peak = _mfu(steps, workers)
    held, joules = usage.held_gpu_seconds, usage.joules
    return Efficiency(
        gpu_hours=held / 3600.0,
        goodput=usage.goodput,
        lost_gpu_seconds={use: usage.of(use).gpu_seconds for use in USES if use != "kept"},
        joules=joules,
        energy_sources=sources,
        productive_joules=usage.of("kept").joules,
        joules_per_clip=joules / kept_clips if kept_clips and joules else None,
        watts_per_device=joules / held if held and joules else None,
        mfu=mfu, peak=peak,
        flop_per_joule=flops / joules if joules and flops else None,
        data_wait_fraction=(float(np.dot(seconds, [p["data_wait_fraction"] for p in steps]) / seconds.sum())
                            if len(seconds) else None),
        step_seconds_p50=float(np.percentile(seconds, 50)) if len(seconds) else None,
        step_seconds_p95=float(np.percentile(seconds, 95)) if len(seconds) else None,
        clips_per_second=sum(p["step_samples"] for p in steps) / seconds.sum() if len(seconds) else None)


def kept_samples(events: list[JobEvent], global_batch: int | None) -> int:
    """The samples whose compute the job keeps: those of the steps its newest checkpoint holds, or of
    an evaluation's committed shards (a shard committed twice, by runners racing a restart, counts once)."""
    if global_batch is None:
        return sum({e.payload["shard"]: e.payload["samples"] for e in events if e.type == "shard"}.values())
    return max((e.payload["step"] for e in events if e.type == "checkpoint"), default=0) * global_batch


def _mfu(steps: list[dict], workers: list[list[dict]]) -> tuple[float | None, str]:
    """Model FLOPs over what the devices could have done during the steps. Each attempt's steps are
    measured against that attempt's devices; unknown if any attempt's peak is."""
    if not workers or not steps:
        return None, "unknown"
    labels = {w["peak"] for attempt in workers for w in attempt}
    if any(w["peak_flops"] is None for attempt in workers for w in attempt):
        return None, "unknown"
    # Steps carry their world size; the devices of a world size are the latest attempt's of that size.
    peak_of_world = {len(attempt): sum(w["peak_flops"] for w in attempt) for attempt in workers}
    possible = sum(p["step_seconds"] * peak_of_world.get(p.get("world_size", 0), 0.0) for p in steps)
    flops = sum(p.get("model_flops", 0.0) for p in steps)
    return (flops / possible if possible else None), ", ".join(sorted(labels))
