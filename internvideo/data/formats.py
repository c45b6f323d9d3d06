"""Dataset annotation formats beyond ``path label`` lists (``lists.py``), read into plain records.

- **Something-Something v2**: a JSON list of ``{"id", "template", ...}`` and a label file mapping
  each template (``[something]`` written ``something``) to a class id; videos are ``<id>.webm``.
- **Video–text** (WebVid style): CSV with a video column and a caption column, or JSON records
  ``{"video": ..., "caption": "..." | [...]}``; a video may have several captions.
- **Multiple choice** (MSR-VTT MC style): JSON records ``{"video", "candidates": [...], "answer": i}``,
  read as records whose captions are the candidates and whose label is the right one's index.
- **Untrimmed videos** with temporal annotations in the ActivityNet JSON layout
  (``{"database": {id: {"duration", "subset", "annotations": [{"segment": [s, e], "label"}]}}}``),
  which THUMOS annotations are commonly converted to as well.
- **Label-map merge** (Kinetics-710 style): several datasets' class names in one label space,
  classes with the same normalised name merged.

Every reader fails with the file and the entry that is wrong; relative video paths resolve
against a root folder (default: the annotation file's folder).
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from internvideo.data.lists import VideoRecord, read_video_list

__all__ = ["CaptionedVideo", "Segment", "UntrimmedVideo", "LabelSpace", "VideoSource", "MergedSource", "read_ssv2",
           "read_video_text", "read_multiple_choice", "read_activitynet", "read_class_names", "merge_label_maps"]


@dataclass(frozen=True)
class CaptionedVideo:
    path: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    label: str


@dataclass(frozen=True)
class UntrimmedVideo:
    path: str
    duration: float
    subset: str
    segments: tuple[Segment, ...]


def _resolve(path: str, root: Path) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def _root(annotation: Path, root: str | Path | None) -> Path:
    return Path(root) if root is not None else annotation.parent


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def read_ssv2(annotation: str | Path, labels: str | Path, root: str | Path | None = None,
              extension: str = "webm") -> list[VideoRecord]:
    """Something-Something v2 ``train.json``/``validation.json`` with its ``labels.json``."""
    annotation, labels = Path(annotation), Path(labels)
    class_ids = {name: int(i) for name, i in _load_json(labels).items()}
    base = _root(annotation, root)
    records = []
    for n, entry in enumerate(_load_json(annotation)):
        if "id" not in entry or "template" not in entry:
            raise ValueError(f"{annotation}: entry {n}: needs 'id' and 'template'")
        template = entry["template"].replace("[", "").replace("]", "")
        if template not in class_ids:
            raise ValueError(f"{annotation}: entry {n}: class {template!r} is not in {labels}")
        records.append(VideoRecord(_resolve(f"{entry['id']}.{extension}", base), class_ids[template]))
    if not records:
        raise ValueError(f"{annotation}: no videos")
    return records


def read_video_text(annotation: str | Path, root: str | Path | None = None, video_key: str = "video",
                    caption_key: str = "caption") -> list[CaptionedVideo]:
    """CSV (``video_key``/``caption_key`` columns; rows of one video are gathered) or JSON records."""
    annotation = Path(annotation)
    base = _root(annotation, root)
    captions: dict[str, list[str]] = {}
    if annotation.suffix.lower() == ".csv":
        with open(annotation, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = _load_json(annotation)
    for n, row in enumerate(rows):
        video, caption = row.get(video_key), row.get(caption_key)
        texts = [caption] if isinstance(caption, str) else caption
        if not video or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{annotation}: entry {n}: needs a {video_key!r} and a non-empty {caption_key!r}")
        captions.setdefault(_resolve(str(video), base), []).extend(t.strip() for t in texts)
    if not captions:
        raise ValueError(f"{annotation}: no videos")
    return [CaptionedVideo(path, tuple(texts)) for path, texts in captions.items()]


def read_multiple_choice(annotation: str | Path, root: str | Path | None = None) -> list[VideoRecord]:
    """JSON records ``{"video", "candidates": [...], "answer": i}``: one record per question, its
    candidates as captions, the right one's index as its label."""
    annotation = Path(annotation)
    base = _root(annotation, root)
    records = []
    for n, row in enumerate(_load_json(annotation)):
        video, candidates, answer = row.get("video"), row.get("candidates"), row.get("answer")
        if not video or not isinstance(candidates, list) or len(candidates) < 2 or not all(
                isinstance(c, str) and c.strip() for c in candidates):
            raise ValueError(f"{annotation}: entry {n}: needs a 'video' and two or more non-empty 'candidates'")
        if not isinstance(answer, int) or not 0 <= answer < len(candidates):
            raise ValueError(f"{annotation}: entry {n}: 'answer' must index its {len(candidates)} candidates, "
                             f"got {answer!r}")
        records.append(VideoRecord(_resolve(str(video), base), answer, tuple(c.strip() for c in candidates)))
    if not records:
        raise ValueError(f"{annotation}: no questions")
    return records


def read_activitynet(annotation: str | Path, root: str | Path | None = None, subset: str | None = None,
                     extension: str = "mp4") -> list[UntrimmedVideo]:
    """Untrimmed videos and their action segments; ``subset`` (e.g. "training") keeps one split."""
    annotation = Path(annotation)
    base = _root(annotation, root)
    database = _load_json(annotation).get("database")
    if not isinstance(database, dict):
        raise ValueError(f"{annotation}: no 'database' object")
    videos = []
    for video_id, entry in database.items():
        if subset is not None and entry.get("subset") != subset:
            continue
        try:
            duration = float(entry["duration"])
            segments = tuple(Segment(float(a["segment"][0]), float(a["segment"][1]), str(a["label"]))
                             for a in entry.get("annotations", []))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"{annotation}: video {video_id}: malformed entry ({e!r})") from None
        for s in segments:
            if not 0 <= s.start < s.end <= duration + 1e-6:
                raise ValueError(f"{annotation}: video {video_id}: segment [{s.start}, {s.end}] outside "
                                 f"[0, {duration}] or empty")
        videos.append(UntrimmedVideo(_resolve(f"{video_id}.{extension}", base), duration,
                                     str(entry.get("subset", "")), segments))
    return videos


@dataclass(frozen=True)
class LabelSpace:
    """One label space for several datasets: ``classes`` names it, ``maps[dataset][old_id]`` → new id."""

    classes: tuple[str, ...]
    maps: dict[str, tuple[int, ...]]

    def relabel(self, dataset: str, records: list[VideoRecord]) -> list[VideoRecord]:
        mapping = self.maps[dataset]
        return [VideoRecord(r.path, mapping[r.label]) for r in records]


def _normalise(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ").strip().lower())


def merge_label_maps(datasets: dict[str, list[str]]) -> LabelSpace:
    """Merge each dataset's class names (index = class id) into one space: classes whose names
    match after normalising (case, underscores, spaces) share an id; new ids follow first appearance."""
    ids: dict[str, int] = {}
    classes: list[str] = []
    maps: dict[str, tuple[int, ...]] = {}
    for dataset, names in datasets.items():
        mapping = []
        for name in names:
            key = _normalise(name)
            if key not in ids:
                ids[key] = len(classes)
                classes.append(key)
            mapping.append(ids[key])
        if len(set(mapping)) != len(mapping):
            raise ValueError(f"dataset {dataset!r} names one class twice (after normalising)")
        maps[dataset] = tuple(mapping)
    return LabelSpace(tuple(classes), maps)


SourceFormat = Literal["list", "ssv2", "video_text", "multiple_choice", "activitynet"]


@dataclass(frozen=True)
class VideoSource:
    """Where a job's videos are listed, in any of the formats above; ``read()`` gives the records a
    decode worker indexes by sample id. Each process reads the file itself, so the record list never
    travels. Captions and segments are not labels: those formats give label 0 here; video–text
    records carry their captions."""

    format: SourceFormat
    path: str
    root: str | None = None
    labels: str | None = None  # ssv2: the labels.json
    subset: str | None = None  # activitynet: keep one split ("training", "validation")

    def __post_init__(self) -> None:
        if (self.format == "ssv2") != (self.labels is not None):
            raise ValueError("format 'ssv2' needs a labels file, and only it takes one")
        if self.subset is not None and self.format != "activitynet":
            raise ValueError("only format 'activitynet' takes a subset")

    def read(self) -> list[VideoRecord]:
        if self.format == "list":
            return read_video_list(self.path, self.root)
        if self.format == "ssv2":
            return read_ssv2(self.path, self.labels, self.root)
        if self.format == "video_text":
            return [VideoRecord(v.path, 0, v.captions) for v in read_video_text(self.path, self.root)]
        if self.format == "multiple_choice":
            return read_multiple_choice(self.path, self.root)
        videos = read_activitynet(self.path, self.root, self.subset)
        if not videos:
            raise ValueError(f"{self.path}: no videos{f' in subset {self.subset!r}' if self.subset else ''}")
        return [VideoRecord(v.path, 0) for v in videos]


def read_class_names(path: str | Path) -> list[str]:
    """Class names, one per line; line ``i`` names class ``i``."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


@dataclass(frozen=True)
class MergedSource:
    """Several labelled datasets read as one, their classes merged by name (Kinetics-710 style):
    each part is a source and the file naming its classes (``read_class_names``)."""

    parts: tuple[tuple[VideoSource, str], ...]

    def label_space(self) -> LabelSpace:
        return merge_label_maps({str(i): read_class_names(classes) for i, (_, classes) in enumerate(self.parts)})

    def read(self) -> list[VideoRecord]:
        space = self.label_space()
        records: list[VideoRecord] = []
        for i, (source, classes) in enumerate(self.parts):
            part = source.read()
            known = len(space.maps[str(i)])
            if any(not 0 <= r.label < known for r in part):
                raise ValueError(f"{source.path}: labels outside the {known} classes of {classes}")
            records += space.relabel(str(i), part)
        return records
