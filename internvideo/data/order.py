"""Which samples each training step consumes.

Step ``s`` consumes positions ``[s·G, (s+1)·G)`` of its epoch's seeded permutation, with a
fixed global batch ``G``. The cursor of a job is therefore just the step number: it stays
exact when the world size changes, because only the split of those ``G`` samples over ranks
and accumulation steps depends on the world size, never which samples they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GlobalBatchPlan:
    num_samples: int
    global_batch: int
    seed: int
    _perms: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.global_batch <= 0:
            raise ValueError(f"global_batch must be positive, got {self.global_batch}")
        if self.num_samples < self.global_batch:
            raise ValueError(f"the dataset has {self.num_samples} samples, fewer than one global batch "
                             f"({self.global_batch}); lower train.global_batch or add videos")

    @property
    def steps_per_epoch(self) -> int:
        # The tail of an epoch that does not fill a global batch is dropped, as in VideoMAE.
        return self.num_samples // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms.clear()  # steps advance monotonically: one epoch cached is enough
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return self._perms[epoch]

    def step_samples(self, step: int) -> np.ndarray:
        """Sample ids of the whole global batch of ``step`` — (G,)."""
        start = (step % self.steps_per_epoch) * self.global_batch
        return self.permutation(self.epoch_of(step))[start:start + self.global_batch]

    def micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[np.ndarray]:
        """The micro-batches ``rank`` runs for ``step``: its contiguous share of the global batch,
        cut into ``G / (world_size · micro_batch)`` accumulation steps."""
        accumulation = gradient_accumulation(self.global_batch, micro_batch, world_size)
        share = self.global_batch // world_size
        mine = self.step_samples(step)[rank * share:(rank + 1) * share]
        return [mine[i * micro_batch:(i + 1) * micro_batch] for i in range(accumulation)]


def gradient_accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Accumulation steps that keep the global batch fixed at this world size."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(f"global batch {global_batch} is not a multiple of micro_batch × world_size "
                         f"= {micro_batch} × {world_size}")
    return global_batch // per_step


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The seed of the model's own random draws (dropout, drop path) for micro-batch ``index`` of the
    global batch of ``step``, counted across ranks (rank · accumulation + micro). Micro-batches hold
    the same samples at every world size (``micro_batches``), so these draws do not depend on it."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1, dtype=np.uint64)[0] >> 1)
