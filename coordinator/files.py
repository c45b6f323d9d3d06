"""Files other processes read while the coordinator runs: written whole or not at all."""
from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so that a reader (Prometheus'
    file discovery, a launcher waiting for the endpoints) never sees it empty or half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
