"""A job's history kept bounded: its sums kept as running totals, its old progress thinned.

A pretraining run of a week writes a progress event per step — a million of them. Its result and
efficiency report need only sums, counts, firsts and lasts of that history (and step-time
percentiles), so the store adds each event to the job's ``HistoryTotals`` in the transaction that
appends it, and they read one row instead of every event. The per-step detail (curves, replays)
is kept whole for the recent steps only; older progress events are thinned to a series that grows
with the logarithm of the job's length (``kept_progress``). Every other event is kept.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from coordinator.store import JobEvent  # the store imports this module

RECENT_STEPS = 1000  # progress events of the newest steps kept whole; the store thins once per this many steps
# The event types the totals take in; the others (state changes, results, decode pool resizes) they ignore.
COUNTED = frozenset({"progress", "checkpoint", "validation", "skipped_video", "shard", "workers"})


def kept_progress(step: int, newest_step: int, recent_steps: int) -> bool:
    """Whether the progress event of ``step`` stays once the job has reached ``newest_step``.

    The newest ``recent_steps`` steps stay whole. Beyond them, age bands double in width while the
    stride doubles: steps ``recent·2^k`` to ``recent·2^(k+1)`` old keep one step in ``2^(k+1)``, so
    each band keeps ``recent/2`` events and a job of N steps keeps about
    ``recent · (1 + log2(N / recent) / 2)`` (6,000 of a million steps at 1,000). Strides are powers
    of two, so a step kept at an older age was kept at every younger one: thinning again later only
    deletes, and thinning every so often equals thinning once at the end. A redone step's events
    share its number and stay or go together."""
    age = newest_step - step
    if age < recent_steps:
        return True
    stride = 2 ** (age // recent_steps).bit_length()
    return step % stride == 0


@dataclass
class StepTimes:
    """Step times as counts in logarithmic buckets: bucket b holds [1.02^b, 1.02^(b+1)), 2 % wide, so a
    percentile read from it is within half a bucket (1 %) of the exact one, whatever the job's length,
    in a few dozen buckets for steps that vary by a factor of two. The fastest and slowest step are
    kept exactly and bound every estimate: steps that all took the same time give that time back."""

    counts: dict[int, int] = field(default_factory=dict)  # bucket → steps
    fastest: float | None = None
    slowest: float | None = None

    GROWTH = 1.02
    SHORTEST = 1e-9  # a step time of 0 (or less) counts in this one's bucket; the bounds stay exact

    def add(self, seconds: float) -> None:
        bucket = math.floor(math.log(max(seconds, self.SHORTEST)) / math.log(self.GROWTH))
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.fastest = seconds if self.fastest is None else min(self.fastest, seconds)
        self.slowest = seconds if self.slowest is None else max(self.slowest, seconds)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile as ``numpy.percentile`` defines it (linear between the two nearest
        ranks), each rank's time read as its bucket's geometric middle; None without steps."""
        n = sum(self.counts.values())
        if not n:
            return None
        rank = q / 100 * (n - 1)
        below = math.floor(rank)
        low, high = self._nth(below), self._nth(min(below + 1, n - 1))
        return low + (high - low) * (rank - below)

    def _nth(self, index: int) -> float:
        """The time of the ``index``-th fastest step (0: the fastest), to its bucket's precision."""
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen > index:
                return min(max(self.GROWTH ** (bucket + 0.5), self.fastest), self.slowest)
        raise IndexError(f"step {index} of {seen}")


@dataclass
class HistoryTotals:
    """What a job's result and efficiency report need of its whole history, over all its attempts.
    ``add`` takes its events in order; a step executed again after a failure counts again."""

    # Progress: the steps (an evaluation's shards) executed.
    steps: int = 0
    first_step: int = 0
    first_loss: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0  # step seconds × the step's data-wait fraction, summed
    model_flops: float = 0.0
    seconds_by_world: dict[int, float] = field(default_factory=dict)  # MFU: each size against its devices
    step_times: StepTimes = field(default_factory=StepTimes)
    # Checkpoints, validations, skipped videos, an evaluation's committed shards.
    checkpoint: str = ""  # the newest checkpoint's path
    checkpointed_step: int = 0  # the furthest step a checkpoint holds
    validation: dict[str, float] = field(default_factory=dict)  # the last validation's metrics
    skipped_videos: int = 0
    shard_samples: dict[int, int] = field(default_factory=dict)  # a shard committed twice counts once
    # The devices of every attempt.
    attempts: int = 0
    peak_of_world: dict[int, float] = field(default_factory=dict)  # the latest attempt of each size: its summed peak
    peaks: list[str] = field(default_factory=list)  # where the peaks came from, sorted
    unknown_peak: bool = False  # an attempt's devices have no known peak: MFU is unknown
    energy_sources: list[str] = field(default_factory=list)  # sorted

    @classmethod
    def of(cls, events: Iterable["JobEvent"]) -> "HistoryTotals":
        totals = cls()
        for event in events:
            totals.add(event.type, event.payload)
        return totals

    def add(self, type_: str, payload: dict[str, Any]) -> None:
        if type_ == "progress":
            self._add_step(payload)
        elif type_ == "checkpoint":
            self.checkpoint = payload["path"]
            self.checkpointed_step = max(self.checkpointed_step, payload["step"])
        elif type_ == "validation":
            self.validation = payload["metrics"]
        elif type_ == "skipped_video":
            self.skipped_videos += 1
        elif type_ == "shard":
            self.shard_samples[payload["shard"]] = payload["samples"]
        elif type_ == "workers":
            self._add_attempt(payload["workers"])

    def _add_step(self, progress: dict[str, Any]) -> None:
        if not self.steps:
            self.first_step, self.first_loss = progress["step"], progress.get("loss")
        self.steps += 1
        # Progress stored before metrics were named carries only the loss; an evaluation's, neither.
        self.last_metrics = progress.get("metrics") or ({"loss": progress["loss"]} if "loss" in progress else {})
        seconds = progress.get("step_seconds", 0.0)
        self.samples += progress.get("step_samples", 0)
        self.seconds += seconds
        self.wait_seconds += seconds * progress.get("data_wait_fraction", 0.0)
        self.model_flops += progress.get("model_flops", 0.0)
        world = progress.get("world_size", 0)
        self.seconds_by_world[world] = self.seconds_by_world.get(world, 0.0) + seconds
        self.step_times.add(seconds)

    def _add_attempt(self, workers: list[dict[str, Any]]) -> None:
        self.attempts += 1
        self.peaks = sorted(set(self.peaks) | {w["peak"] for w in workers})
        self.energy_sources = sorted(set(self.energy_sources) | {s for w in workers for s in w["energy_sources"]})
        if any(w["peak_flops"] is None for w in workers):
            self.unknown_peak = True
        else:
            self.peak_of_world[len(workers)] = sum(w["peak_flops"] for w in workers)

    def to_json(self) -> str:
        # Written at every counted event: the fields as they are (``asdict`` would copy them first, 4x slower).
        return json.dumps({**vars(self), "step_times": vars(self.step_times)})

    @classmethod
    def from_json(cls, text: str) -> "HistoryTotals":
        data = json.loads(text)
        step_times = data.pop("step_times")
        numbered = {name: _int_keys(data[name]) for name in ("seconds_by_world", "shard_samples", "peak_of_world")}
        return cls(**{**data, **numbered},
                   step_times=StepTimes(_int_keys(step_times["counts"]), step_times["fastest"], step_times["slowest"]))


def _int_keys(data: dict[str, Any]) -> dict[int, Any]:
    """A dict keyed by numbers, as JSON stored it (its keys strings)."""
    return {int(key): value for key, value in data.items()}
