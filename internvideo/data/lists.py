"""Video list files in the VideoMAE / Kinetics format.

One sample per line: ``<path> <label>``. VideoMAE's loaders read these with
either a space (``train.csv`` in VideoMAE) or a comma (the ``split=','`` lists of
its descendants) between the two fields, so both are accepted here. Relative
paths are resolved against a root folder so a dataset directory can be moved as a
whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VideoRecord", "read_video_list", "write_video_list"]


@dataclass(frozen=True)
class VideoRecord:
    """One video as a decode worker indexes it: a file path, an integer class id, and its captions
    (video–text sources; empty otherwise)."""

    path: str
    label: int
    captions: tuple[str, ...] = ()


def _split_line(line: str) -> list[str]:
    # A comma anywhere means a comma-separated line; otherwise any run of
    # whitespace separates the fields (VideoMAE writes a single space, but tabs
    # and double spaces from hand-edited lists are harmless).
    if "," in line:
        return [field.strip() for field in line.split(",")]
    return line.split()


def read_video_list(list_path: str | Path, root: str | Path | None = None) -> list[VideoRecord]:
    """Read a ``path label`` list file.

    Blank lines are skipped. Relative paths are joined to ``root`` (default: the
    folder holding the list file); absolute paths are kept as they are.

    Raises:
        ValueError: a line that is not exactly ``path label`` with an integer
            label (the message names the file and the 1-based line number), or a
            list with no samples.
    """
    list_path = Path(list_path)
    base = Path(root) if root is not None else list_path.parent
    records: list[VideoRecord] = []
    with open(list_path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            fields = _split_line(line)
            if len(fields) != 2 or not fields[0]:
                raise ValueError(
                    f"{list_path}:{lineno}: expected '<path> <label>', got {raw.rstrip()!r}"
                )
            path, label_text = fields
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(
                    f"{list_path}:{lineno}: label {label_text!r} is not an integer"
                ) from None
            if not os.path.isabs(path):
                path = os.path.normpath(os.path.join(base, path))
            records.append(VideoRecord(path=path, label=label))
    if not records:
        raise ValueError(f"{list_path}: the video list is empty")
    return records


def write_video_list(path: str | Path, records: Iterable[VideoRecord]) -> None:
    """Write records as ``path label`` lines (space separated), paths as given.

    Raises:
        ValueError: a path containing whitespace or a comma, which the reader
            could not split back unambiguously.
    """
    lines = []
    for rec in records:
        if not rec.path or any(c.isspace() for c in rec.path) or "," in rec.path:
            raise ValueError(f"cannot write path {rec.path!r}: empty or contains whitespace/comma")
        lines.append(f"{rec.path} {int(rec.label)}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")
