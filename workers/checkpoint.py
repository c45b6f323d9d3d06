"""Checkpoint folders, their commit marker, and conversion to DeepSpeed's universal layout.

All ranks write their shards into ``<job>/checkpoints/step-00000042``; only after every rank
returned does the job runner write ``COMMITTED`` (atomically, by rename). A folder without
the marker is a half-written checkpoint and is never loaded.

ZeRO-1 and above shard the optimizer state by rank, so their checkpoints load as saved only into an
engine of the same stage, at the world size (and in the precision of weights) that saved them. ZeRO-0
writes its whole state into one file every rank reads: it loads into a ZeRO-0 engine at any world size,
in the precision that saved it. Otherwise a checkpoint is converted once into the universal layout (one
file per parameter and state), kept beside the shards in ``<folder>/universal``: by DeepSpeed's
``ds_to_universal`` from ZeRO shards, by ``workers.zero0_universal`` from ZeRO-0's one file.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COMMIT_MARKER = "COMMITTED"
UNIVERSAL = "universal"


def checkpoint_folder(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def commit(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / f".{COMMIT_MARKER}.tmp"
    tmp.write_text(json.dumps({**meta, "committed_at": time.time()}))
    os.replace(tmp, folder / COMMIT_MARKER)


def read_commit(folder: str | Path) -> dict[str, Any]:
    """The commit record of a checkpoint folder; ValueError if it is not a committed checkpoint."""
    marker = Path(folder) / COMMIT_MARKER
    if not marker.is_file():
        raise ValueError(f"{folder} is not a committed checkpoint (no {COMMIT_MARKER} marker)")
    return json.loads(marker.read_text())


def loads_as_saved(folder: str | Path, *, world_size: int, weights: str | None, zero_stage: int) -> bool:
    """Whether an engine of ``world_size`` ranks at ``zero_stage`` (``workers.engine.engine_zero_stage``)
    training ``weights`` (a dtype's name, ``torch.float32``; None where the device will decide) loads the
    committed checkpoint ``folder`` as it is; if not, it loads its universal form. A universal checkpoint
    loads at any world size, stage and precision.

    A checkpoint of another precision goes through the universal layout too: DeepSpeed names a bf16
    engine's ZeRO files apart (``bf16_zero_pp_rank_*``), and in 0.19 its fallback to the other kind's
    names never fires (the name lookup returns names that do not exist rather than none), while the
    universal layout holds the fp32 master weights and the optimizer's state whatever the precision. A
    checkpoint committed before the weights were recorded is told by those file names. One with no ZeRO
    files (ZeRO-0: every rank reads the one file of the whole state) loads into a ZeRO-0 engine at any
    world size."""
    folder = Path(folder)
    meta = read_commit(folder)  # refuses a half-written checkpoint
    if meta.get("universal"):
        return True
    saved = meta.get("weights") or _weights_by_file_names(folder)
    saved_at_zero_0 = not _has_zero_shards(folder)
    saved_at_zero_3 = any(folder.glob("zero_pp_rank_*_model_states.pt"))
    if (saved_at_zero_0 and zero_stage == 3) or (saved_at_zero_3 and zero_stage == 0):
        # DeepSpeed's ZeRO-3 reads a variant of the universal layout that ZeRO-0's converter does not write
        # and whose parameters ZeRO-0's restore cannot read; a job never crosses between the two stages.
        raise ValueError(f"{folder} was saved at ZeRO-{3 if saved_at_zero_3 else 0} and cannot be restored at "
                         f"ZeRO-{zero_stage}: resume it at train.zero_stage 1 or 2, or on more than one rank")
    if saved_at_zero_0 != (zero_stage == 0):
        return False
    same_layout = saved_at_zero_0 or meta["world_size"] == world_size
    return same_layout and (saved is None or weights is None or saved == weights)


def _has_zero_shards(folder: Path) -> bool:
    return any(folder.glob("*zero_pp_rank_*"))


def _weights_by_file_names(folder: Path) -> str | None:
    if any(folder.glob("bf16_zero_pp_rank_*")):
        return "torch.bfloat16"
    return "torch.float32" if any(folder.glob("zero_pp_rank_*")) else None


def to_universal(folder: str | Path, timeout_s: float = 3600.0) -> Path:
    """The universal form of a committed checkpoint, converting it on first use.

    The converter (DeepSpeed's ``ds_to_universal`` for ZeRO shards, ``workers.zero0_universal`` for a ZeRO-0
    checkpoint) runs in a child process, as it holds the whole state in memory (and DeepSpeed's uses process
    pools), into a temporary folder that is committed and renamed only when complete. Runners that ask at
    once (jobs resuming from one checkpoint) take turns: the first converts, the others find it converted.
    """
    folder = Path(folder)
    meta = read_commit(folder)
    out = folder / UNIVERSAL
    with open(folder / f".{UNIVERSAL}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / COMMIT_MARKER).is_file():
            _convert(folder, meta, out, timeout_s)
    return out


def _convert(folder: Path, meta: dict[str, Any], out: Path, timeout_s: float) -> None:
    tmp = folder / f".{UNIVERSAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if _has_zero_shards(folder):
        converter = ["deepspeed.checkpoint.ds_to_universal", "--input_folder", str(folder), "--output_folder",
                     str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1", "--inject_missing_state"]
    else:
        tmp.mkdir()
        converter = ["workers.zero0_universal", str(folder), str(tmp)]
    done = subprocess.run([sys.executable, "-m", *converter], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"converting {folder} to a universal checkpoint failed: {done.stderr[-2000:]}")
    commit(tmp, {**meta, "universal": True})
    shutil.rmtree(out, ignore_errors=True)  # a half-renamed earlier attempt
    os.replace(tmp, out)
