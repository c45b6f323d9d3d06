"""Goodput: where a job's GPU-time and energy went.

While an attempt holds its trainers, the runner marks the end of each thing it does, and the
ledger charges the time since the previous mark — times the trainers held — to one use. So every
GPU-second of the job is charged once, to exactly one of:

- ``kept``: step compute whose result a committed checkpoint (or the end) kept — the goodput;
- ``redone``: step compute lost when a worker failed before the next checkpoint (done again);
- ``data_wait``: trainers waiting inside a step for decoded clips;
- ``startup`` / ``teardown``: building the group and restoring its state, tearing it down;
- ``recovery``: the call that failed, and the restart after a failure;
- ``checkpoint``, ``validation``: saving state, evaluating on the held-out set;
- ``overhead``: the coordinator's own work between steps (records, resizing the decode pool,
  pruning old checkpoints);
- ``idle``: held, doing nothing (a debug hold).

A coordinator that dies loses its runners' uncheckpointed steps from memory; the next runner of
the job charges the held time no use accounts for as ``redone`` (``unaccounted``).

Energy comes from the workers: each call reports the joules its device used since its previous
report, and they are charged to that call's use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

USES = ("kept", "redone", "data_wait", "startup", "teardown", "recovery", "checkpoint", "validation", "overhead",
        "idle")
LOST_USES = tuple(use for use in USES if use != "kept")


@dataclass
class Usage:
    gpu_seconds: float = 0.0
    joules: float = 0.0

    def add(self, gpu_seconds: float, joules: float) -> None:
        self.gpu_seconds += gpu_seconds
        self.joules += joules


@dataclass(frozen=True)
class JobUsage:
    """A job's GPU-time and energy by use, summed over its attempts; ``held_gpu_seconds``: the time
    its trainers were held, measured as a whole (what the uses must add up to)."""

    uses: dict[str, Usage]
    held_gpu_seconds: float

    def of(self, use: str) -> Usage:
        return self.uses.get(use, Usage())

    @property
    def lost_gpu_seconds(self) -> float:
        return sum(self.of(use).gpu_seconds for use in LOST_USES)

    @property
    def joules(self) -> float:
        return sum(usage.joules for usage in self.uses.values())

    @property
    def unaccounted(self) -> float:
        """Held GPU-seconds no use has: steps a dead coordinator held in memory (see the module)."""
        return self.held_gpu_seconds - sum(usage.gpu_seconds for usage in self.uses.values())

    def plus(self, charged: dict[str, Usage], held_gpu_seconds: float) -> "JobUsage":
        uses = {use: Usage(u.gpu_seconds, u.joules) for use, u in self.uses.items()}
        for use, usage in charged.items():
            uses.setdefault(use, Usage()).add(usage.gpu_seconds, usage.joules)
        return JobUsage(uses, self.held_gpu_seconds + held_gpu_seconds)

    @property
    def goodput(self) -> float | None:
        """The share of the held GPU-time spent on steps that were kept."""
        return self.of("kept").gpu_seconds / self.held_gpu_seconds if self.held_gpu_seconds else None


@dataclass
class UsageLedger:
    """One job's GPU-time by use, in the runner. ``flush`` hands over what was charged since the
    last flush, for the store to add up across attempts and coordinator restarts."""

    clock: Callable[[], float] = time.perf_counter
    _world: int = 0
    _mark: float = 0.0
    _held_since: float = 0.0
    _pending: dict[int, Usage] = field(default_factory=dict)  # steps done since the last checkpoint
    _unflushed: dict[str, Usage] = field(default_factory=dict)
    _held_unflushed: float = 0.0

    @property
    def holding(self) -> bool:
        return self._world > 0

    def hold(self, world_size: int, since: float | None = None) -> None:
        """The attempt holds ``world_size`` trainers' devices from ``since`` (a ``clock`` reading; None:
        now)."""
        self._world = world_size
        self._mark = self._held_since = self.clock() if since is None else since

    def _interval(self) -> float:
        now = self.clock()
        seconds, self._mark = now - self._mark, now
        return seconds * self._world

    def charge(self, use: str, joules: float = 0.0) -> None:
        """Everything since the previous mark went to ``use``."""
        if use not in USES:
            raise ValueError(f"unknown use {use!r}")
        if self.holding:
            self._unflushed.setdefault(use, Usage()).add(self._interval(), joules)

    def step(self, step: int, data_wait_seconds: list[float], joules: float) -> None:
        """Step ``step`` just ended; each rank waited ``data_wait_seconds[rank]`` for clips in it. Its
        compute is kept only once a checkpoint covers it."""
        gpu_seconds = self._interval()
        waited = min(sum(data_wait_seconds), gpu_seconds)
        share = waited / gpu_seconds if gpu_seconds else 0.0
        self._unflushed.setdefault("data_wait", Usage()).add(waited, joules * share)
        self._pending.setdefault(step, Usage()).add(gpu_seconds - waited, joules * (1 - share))

    def kept(self, steps_done: int) -> None:
        """A checkpoint now holds ``steps_done`` steps: their compute is kept."""
        for step in [s for s in self._pending if s < steps_done]:
            usage = self._pending.pop(step)
            self._unflushed.setdefault("kept", Usage()).add(usage.gpu_seconds, usage.joules)

    def lost(self) -> None:
        """Steps no checkpoint holds are gone: charge them as redone."""
        for usage in self._pending.values():
            self._unflushed.setdefault("redone", Usage()).add(usage.gpu_seconds, usage.joules)
        self._pending.clear()

    def release(self, use: str = "teardown") -> None:
        """The attempt's trainers are gone: the rest goes to ``use``, and their held time ends."""
        if not self.holding:
            return
        self.charge(use)
        self._held_unflushed += (self._mark - self._held_since) * self._world
        self._world = 0

    def flush(self) -> tuple[dict[str, Usage], float]:
        """(use → usage charged since the last flush, held GPU-seconds of attempts that ended since)."""
        if self.holding:  # count the held time so far, from where it stands now
            self._held_unflushed += (self._mark - self._held_since) * self._world
            self._held_since = self._mark
        charged, held = self._unflushed, self._held_unflushed
        self._unflushed, self._held_unflushed = {}, 0.0
        return charged, held
