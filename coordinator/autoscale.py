"""How big a job's decode pool should be, from how long its trainers wait for clips.

A trainer that waits a fraction ``f`` of each step for data runs at ``1 - f`` of the speed its
decode pool would have to feed: the pool must be ``1 / (1 - f)`` times larger. The sizer grows
by that ratio at once (one decision, not one worker per window) when the recent mean wait is
over the target, and gives one worker back when every recent step waited less than a quarter of
the target. It never shrinks back to a size it has already had to grow out of, so a pool that
is just big enough does not flap. It decides once per window of steps, from that window alone:
the steps before measured another pool, and asking the cluster for room every step would put a
round trip on each step.
"""
from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass, field


@dataclass
class PoolDecision:
    size: int
    data_wait_fraction: float  # the window's mean
    reason: str


@dataclass
class DecodePoolSizer:
    minimum: int
    maximum: int
    target: float  # acceptable data-wait fraction of a step, e.g. 0.05
    window: int  # steps behind each decision
    _waits: collections.deque = field(init=False)
    _floor: int = field(init=False)
    _shrunk_from: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum ({self.minimum}) <= maximum ({self.maximum})")
        if not 0 < self.target < 1 or self.window < 1:
            raise ValueError(f"need 0 < target < 1 and window >= 1, got {self.target}, {self.window}")
        self._waits = collections.deque(maxlen=self.window)
        self._floor = self.minimum

    def observe(self, data_wait_fraction: float) -> bool:
        """One step's wait: the slowest rank's share of the step spent waiting for clips. True when
        a window is complete and ``decide`` is due (never for a pool of fixed size)."""
        self._waits.append(min(max(data_wait_fraction, 0.0), 0.99))
        return self.minimum < self.maximum and len(self._waits) == self.window

    def decide(self, size: int, limit: int) -> PoolDecision | None:
        """A new size for a pool of ``size`` workers that may hold at most ``limit`` now (what the
        cluster and the queue allow), or None to keep it. Over the limit, shrink to it at once.
        Starts the next window either way."""
        limit = max(self.minimum, min(self.maximum, limit))
        mean = statistics.fmean(self._waits) if self._waits else 0.0
        peak = max(self._waits, default=0.0)
        full = len(self._waits) == self.window
        self._waits.clear()
        if size > limit:
            return self._resized(size, limit, mean, "the cluster needs the CPUs back")
        if not full:
            return None
        if mean > self.target and size < limit:
            wanted = math.ceil(size / (1.0 - mean))
            return self._resized(size, min(limit, max(size + 1, wanted)),
                                 mean, f"trainers waited {mean:.0%} of each step (target {self.target:.0%})")
        if peak < self.target / 4 and size > self._floor:
            return self._resized(size, size - 1, mean, f"trainers waited at most {peak:.1%} of a step")
        return None

    def _resized(self, old: int, new: int, mean: float, reason: str) -> PoolDecision:
        if new > old and self._shrunk_from is not None and new >= self._shrunk_from:
            self._floor = max(self._floor, self._shrunk_from)  # that shrink was one too many
        self._shrunk_from = old if new < old else None
        return PoolDecision(new, mean, reason)
