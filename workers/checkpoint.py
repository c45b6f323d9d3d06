"""Checkpoint folders and their commit marker.

All ranks write their shards into ``<job>/checkpoints/step-00000042``; only after every rank
returned does the job runner write ``COMMITTED`` (atomically, by rename). A folder without
the marker is a half-written checkpoint and is never loaded.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

COMMIT_MARKER = "COMMITTED"


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
