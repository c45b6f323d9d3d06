"""An evaluation job's unit of work: shards of its list, and the predictions it has committed.

The list's samples are cut into shards of ``eval.shard_size`` in sample-id order — the cut does not
depend on the world size. A shard's predictions are written to ``shard-NNNNN.npz`` under a temporary
name and renamed into place once complete (the rename is the commit): whatever ends a runner — a lost
worker, a preemption, a rescale, a killed coordinator — the next one finds which shards are done by
listing the folder, and redoes only the others. ``plan.json`` says what the shards were made under
(the sample count, the shard size, a key of what the sample ids mean): under another plan they do
not count.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
SAMPLE_IDS = "sample_ids"
_SHARD = re.compile(r"shard-(\d{5,})\.npz")


@dataclass(frozen=True)
class ShardPlan:
    num_samples: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.shard_size < 1:
            raise ValueError(f"need at least one sample and a shard size >= 1: {self}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def sample_ids(self, shard: int) -> list[int]:
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} of {self.num_shards}")
        return list(range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples)))


class CommittedShards:
    """The committed predictions of one evaluation, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.npz"

    def done(self) -> set[int]:
        if not self.folder.is_dir():
            return set()
        return {int(m.group(1)) for name in os.listdir(self.folder) if (m := _SHARD.fullmatch(name))}

    def bind(self, plan: ShardPlan, key: str) -> None:
        """Committed shards count only for the plan they were made under (``key``: what the sample ids
        mean); under another, they are removed and every shard is done again."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / "plan.json"
        wanted = {"num_samples": plan.num_samples, "shard_size": plan.shard_size, "key": key}
        if manifest.exists() and json.loads(manifest.read_text()) == wanted:
            return
        stale = self.done()
        if stale:
            log.warning("%s: %d committed shards were made under another plan of the samples; redoing them",
                        self.folder, len(stale))
        for shard in stale:
            self.path(shard).unlink()
        _write_atomically(manifest, lambda file: file.write(json.dumps(wanted).encode()))

    def commit(self, shard: int, outputs: dict[str, np.ndarray]) -> Path:
        """Write the shard's predictions (rows in sample-id order, ``sample_ids`` among them) and make
        them count, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(shard)
        _write_atomically(final, lambda file: np.savez(file, **outputs))
        return final

    def load(self, plan: ShardPlan) -> dict[str, np.ndarray]:
        """Every shard's predictions, rows in sample-id order (samples that could not be decoded are
        not among them). Fails if a shard of ``plan`` is missing."""
        missing = sorted(set(range(plan.num_shards)) - self.done())
        if missing:
            raise RuntimeError(f"shards {missing[:10]} of {plan.num_shards} are not committed")
        parts: dict[str, list[np.ndarray]] = {}
        for shard in range(plan.num_shards):
            with np.load(self.path(shard)) as arrays:
                for name in arrays.files:
                    parts.setdefault(name, []).append(arrays[name])
        return {name: np.concatenate(values) for name, values in parts.items()}


def _write_atomically(path: Path, write) -> None:
    """``write(file)`` into a private temporary file beside ``path``, then rename it into place."""
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def merge_rank_outputs(reports: list[dict], sample_ids: list[int]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """One shard's outputs from its ranks' reports, rows in sample-id order, and the videos that were
    skipped; every sample of the shard must be predicted or skipped exactly once."""
    outputs = [r["outputs"] for r in reports if r["outputs"]]
    skipped = [skip for r in reports for skip in r["skipped"]]
    predicted = np.concatenate([o[SAMPLE_IDS] for o in outputs]) if outputs else np.zeros(0, np.int64)
    covered = sorted([*predicted.tolist(), *(s["sample_id"] for s in skipped)])
    if covered != sorted(sample_ids):
        raise RuntimeError(f"the shard's predictions cover samples {covered[:10]}…, not each of "
                           f"{sample_ids[0]}…{sample_ids[-1]} once")
    order = np.argsort(predicted, kind="stable")
    names = outputs[0].keys() if outputs else [SAMPLE_IDS]
    merged = {name: (np.concatenate([o[name] for o in outputs])[order] if outputs else predicted)
              for name in names}
    return merged, skipped
