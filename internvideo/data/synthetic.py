"""A small synthetic action dataset of real H.264 files, for tests and demos.

Each video is one coloured shape (square or disc) on a smooth two-colour
gradient, doing one of 8 actions. The classes come in time-reversed pairs
(left/right, up/down, grow/shrink, fade in/out) drawn from the same
distribution of trajectories, so a single frame says nothing about the class:
only temporal order does. There is no pixel noise, so VideoMAE's per-patch
normalised pixel targets are learnable.

Everything is derived from ``seed``: the same seed gives the same pixels and
the same lists (x264 runs single-threaded, which keeps its output bit-stable).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from internvideo.data.lists import VideoRecord, write_video_list

__all__ = [
    "ACTION_PHRASES",
    "CLASSES",
    "COLOURS",
    "SyntheticDataset",
    "render_video",
    "write_mp4",
    "write_synthetic_dataset",
    "write_untrimmed_dataset",
]

CLASSES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "fade_in",
    "fade_out",
)

# How a caption says each action (zero-shot prompts can use them too).
ACTION_PHRASES = {
    "move_left": "moves to the left",
    "move_right": "moves to the right",
    "move_up": "moves up",
    "move_down": "moves down",
    "grow": "grows",
    "shrink": "shrinks",
    "fade_in": "fades in",
    "fade_out": "fades out",
}

# Saturated colours, far from the muted background range below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 205, 70),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 210),
    "cyan": (40, 215, 225),
    "orange": (250, 145, 30),
    "white": (245, 245, 245),
}
_SHAPES = ("square", "disc")


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of a dataset written by :func:`write_synthetic_dataset`."""

    root: Path
    train_list: Path
    val_list: Path
    captions_csv: Path  # every video's caption (WebVid-style CSV: video, caption)
    train_captions: Path  # the same, split as train.txt / val.txt
    val_captions: Path
    # Each held-out video's caption among 4 made from it with another action's phrase (hard negatives:
    # the same shape and colour), shuffled: ``{"video", "candidates", "answer"}``.
    val_multiple_choice: Path
    classes_txt: Path
    classes: tuple[str, ...]


def write_image(path: str | Path, frame: np.ndarray) -> None:
    """Write one uint8 (H, W, 3) RGB frame as a PNG (lossless) or JPEG, by the path's suffix."""
    import av  # only the writer needs PyAV

    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    png = str(path).lower().endswith(".png")
    with av.open(str(path), mode="w", format="image2") as out:
        stream = out.add_stream("png" if png else "mjpeg")
        stream.width, stream.height = frame.shape[1], frame.shape[0]
        stream.pix_fmt = "rgb24" if png else "yuvj420p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_mp4(
    path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 18, faststart: bool = False
) -> None:
    """Encode uint8 (T, H, W, 3) RGB frames as H.264/yuv420p mp4 (H, W even).

    ``faststart`` puts the index (moov atom) before the frame data instead of after.
    """
    import av  # only the writer needs PyAV

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even sizes, got {h}x{w}")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # threads=1: x264 output then depends only on the input, not the core count.
        # bf=0: no B-frames, so frame order = decode order for any reader.
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "bf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():  # flush
            out.mux(packet)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """Linear blend of two muted colours along a random direction: float (S, S, 3)."""
    c0, c1 = rng.uniform(20.0, 150.0, size=(2, 3))
    angle = rng.uniform(0.0, 2 * np.pi)
    coords = (np.arange(size) + 0.5) / size - 0.5
    proj = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]  # (S, S)
    t = (proj - proj.min()) / (proj.max() - proj.min())
    return c0 + (c1 - c0) * t[..., None]


def render_video(
    action: str, num_frames: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """Render one video of ``action``: uint8 (T, S, S, 3) frames and its caption.

    Draw order from ``rng`` is fixed (shape, colour, background, trajectory), so
    a generator state always yields the same video.
    """
    if action not in ACTION_PHRASES:
        raise ValueError(f"unknown action {action!r}; expected one of {CLASSES}")
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    colour_name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    colour = np.asarray(COLOURS[colour_name], dtype=np.float64)
    background = _gradient(rng, size)  # (S, S, 3)

    s = float(size)
    ramp = np.linspace(0.0, 1.0, num_frames)  # (T,) linear progress
    alpha = np.ones(num_frames)
    if action.startswith("move_"):
        r = rng.uniform(0.10, 0.15) * s
        lo, hi = r + 1.0, s - r - 1.0
        # Endpoints from one distribution for both directions, so the reversed
        # video of one class is a typical video of its partner class.
        a = rng.uniform(lo, lo + 0.25 * (hi - lo))
        b = rng.uniform(hi - 0.25 * (hi - lo), hi)
        fixed = rng.uniform(lo, hi)
        path = a + (b - a) * ramp if action in ("move_right", "move_down") else b + (a - b) * ramp
        if action in ("move_left", "move_right"):
            cx, cy = path, np.full(num_frames, fixed)
        else:  # image rows grow downwards: "up" is decreasing y
            cx, cy = np.full(num_frames, fixed), path
        radius = np.full(num_frames, r)
    else:
        if action in ("grow", "shrink"):
            r_small, r_big = rng.uniform(0.05, 0.09) * s, rng.uniform(0.22, 0.30) * s
            radius = r_small + (r_big - r_small) * (ramp if action == "grow" else 1.0 - ramp)
            margin = r_big + 1.0
        else:  # fade_in / fade_out
            r = rng.uniform(0.14, 0.22) * s
            radius = np.full(num_frames, r)
            alpha = ramp if action == "fade_in" else 1.0 - ramp
            margin = r + 1.0
        cx = np.full(num_frames, rng.uniform(margin, s - margin))
        cy = np.full(num_frames, rng.uniform(margin, s - margin))

    grid = np.arange(size) + 0.5  # pixel centres
    dx = np.abs(grid[None, None, :] - cx[:, None, None])  # (T, 1, S)
    dy = np.abs(grid[None, :, None] - cy[:, None, None])  # (T, S, 1)
    dist = np.maximum(dx, dy) if shape == "square" else np.sqrt(dx**2 + dy**2)  # (T, S, S)
    # One-pixel soft edge: anti-aliased motion is smooth, which H.264 keeps clean.
    cover = np.clip(radius[:, None, None] - dist + 0.5, 0.0, 1.0) * alpha[:, None, None]
    cover = cover[..., None]  # (T, S, S, 1)
    frames = background[None] * (1.0 - cover) + colour * cover  # (T, S, S, 3)
    article = "an" if colour_name[0] in "aeiou" else "a"
    caption = f"{article} {colour_name} {shape} {ACTION_PHRASES[action]}"
    return np.rint(frames).clip(0, 255).astype(np.uint8), caption


def _stratified_val(labels: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """Pick n_val indices so that every class is as equally represented as possible."""
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    tiebreak = rng.permutation(len(labels))  # which classes get the leftover slots
    order = np.lexsort((tiebreak, rank))  # by rank, then random
    return np.sort(order[:n_val])


def write_synthetic_dataset(
    out_dir: str | Path,
    num_videos: int = 64,
    num_frames: int = 32,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> SyntheticDataset:
    """Write ``videos/*.mp4``, ``train.txt``, ``val.txt``, ``captions.csv`` (and its split,
    ``train_captions.csv``, ``val_captions.csv``), ``classes.txt``.

    Video ``i`` has class ``i % 8``; the val split is stratified by class
    (``round(val_fraction * num_videos)`` videos) and both lists use relative
    paths (``videos/000000.mp4 3``). Existing files are overwritten.
    """
    if num_videos < 1 or num_frames < 2 or fps < 1:
        raise ValueError("need num_videos >= 1, num_frames >= 2, fps >= 1")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)

    labels = np.arange(num_videos) % len(CLASSES)
    rel_paths = [f"videos/{i:06d}.mp4" for i in range(num_videos)]
    captions = []
    for i in range(num_videos):
        # Per-video stream: video i's pixels do not depend on num_videos.
        frames, caption = render_video(
            CLASSES[labels[i]], num_frames, size, np.random.default_rng([seed, 0, i])
        )
        write_mp4(root / rel_paths[i], frames, fps=fps)
        captions.append(caption)

    n_val = min(int(round(val_fraction * num_videos)), num_videos - 1)
    val_idx = _stratified_val(labels, n_val, np.random.default_rng([seed, 1]))
    is_val = np.zeros(num_videos, dtype=bool)
    is_val[val_idx] = True

    ds = SyntheticDataset(
        root=root,
        train_list=root / "train.txt",
        val_list=root / "val.txt",
        captions_csv=root / "captions.csv",
        train_captions=root / "train_captions.csv",
        val_captions=root / "val_captions.csv",
        val_multiple_choice=root / "val_multiple_choice.json",
        classes_txt=root / "classes.txt",
        classes=CLASSES,
    )
    records = [VideoRecord(rel_paths[i], int(labels[i])) for i in range(num_videos)]
    write_video_list(ds.train_list, [r for r, v in zip(records, is_val) if not v])
    write_video_list(ds.val_list, [r for r, v in zip(records, is_val) if v])
    for path, keep in ((ds.captions_csv, ~is_val | is_val), (ds.train_captions, ~is_val), (ds.val_captions, is_val)):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "caption"])
            writer.writerows((p, c) for p, c, k in zip(rel_paths, captions, keep) if k)
    choices = np.random.default_rng([seed, 2])
    questions = [_multiple_choice(rel_paths[i], captions[i], CLASSES[labels[i]], choices) for i in np.flatnonzero(is_val)]
    ds.val_multiple_choice.write_text(json.dumps(questions, indent=1), encoding="utf-8")
    ds.classes_txt.write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    return ds


def _multiple_choice(video: str, caption: str, action: str, rng: np.random.Generator, choices: int = 5) -> dict:
    """The caption and ``choices - 1`` others with another action's phrase in its place, shuffled."""
    others = [a for a in CLASSES if a != action]
    wrong = [others[int(i)] for i in rng.choice(len(others), choices - 1, replace=False)]
    candidates = [caption, *(caption.replace(ACTION_PHRASES[action], ACTION_PHRASES[a]) for a in wrong)]
    order = rng.permutation(choices)
    return {"video": video, "candidates": [candidates[int(i)] for i in order], "answer": int(np.argmax(order == 0))}


def write_untrimmed_dataset(
    out_dir: str | Path,
    num_videos: int = 8,
    segments_per_video: tuple[int, int] = (2, 4),
    segment_frames: tuple[int, int] = (12, 24),
    gap_frames: tuple[int, int] = (4, 16),
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> Path:
    """Untrimmed videos for temporal localisation, with ActivityNet-format annotations.

    Each video ``v_{i:06d}.mp4`` is a run of idle gaps (the neighbouring action's end frame held
    still: nothing moves) and action segments of the 8 classes; the segment and gap counts and
    lengths are drawn from the given inclusive ranges. Writes ``activitynet.json`` beside the
    videos (``{"database": {id: {"subset", "duration", "annotations": [{"segment", "label"}]}}}``,
    times in seconds) and returns its path.
    """
    ranges = {"segments_per_video": segments_per_video, "segment_frames": segment_frames, "gap_frames": gap_frames}
    for name, (lo, hi) in ranges.items():
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} must be a range 1 <= lo <= hi, got {(lo, hi)}")
    if segment_frames[0] < 2 or num_videos < 1 or fps < 1 or size < 16 or size % 2:
        raise ValueError("need segment_frames >= 2, num_videos >= 1, fps >= 1, size even and >= 16")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    n_val = min(int(round(val_fraction * num_videos)), num_videos - 1)
    val = set(np.random.default_rng([seed, 3]).permutation(num_videos)[:n_val].tolist())
    database = {}
    for i in range(num_videos):
        rng = np.random.default_rng([seed, 2, i])
        pieces, annotations, t = [], [], 0
        for k in range(int(rng.integers(segments_per_video[0], segments_per_video[1] + 1))):
            length = int(rng.integers(segment_frames[0], segment_frames[1] + 1))
            action = CLASSES[int(rng.integers(len(CLASSES)))]
            frames, _ = render_video(action, length, size, rng)  # (L, S, S, 3)
            gap = int(rng.integers(gap_frames[0], gap_frames[1] + 1))
            pieces += [np.repeat(frames[:1], gap, axis=0), frames]  # idle, then the action
            annotations.append({"segment": [(t + gap) / fps, (t + gap + length) / fps], "label": action})
            t += gap + length
        tail = int(rng.integers(gap_frames[0], gap_frames[1] + 1))
        pieces.append(np.repeat(pieces[-1][-1:], tail, axis=0))
        video_id = f"v_{i:06d}"
        write_mp4(root / f"{video_id}.mp4", np.concatenate(pieces), fps=fps)
        database[video_id] = {"subset": "validation" if i in val else "training",
                              "duration": (t + tail) / fps, "annotations": annotations}
    annotation = root / "activitynet.json"
    annotation.write_text(json.dumps({"version": "synthetic", "database": database}, indent=1), encoding="utf-8")
    return annotation
