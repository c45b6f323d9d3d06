"""Pieces the loader benchmarks share, free of Ray so that they also run on the GPU machine: the
benchmark videos and the peer loader's dataset (VideoMAE's way of loading)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from internvideo.data.lists import VideoRecord, write_video_list
from internvideo.data.order import GlobalBatchPlan
from internvideo.data.pipeline import PretrainClipSpec, load_pretrain_clip
from internvideo.data.synthetic import CLASSES, render_video, write_mp4


def write_videos(folder: Path, count: int, height: int, width: int, frames: int, fps: int) -> Path:
    """``count`` synthetic videos at ``height`` × ``width`` and their list (relative paths). A square
    render, stretched, over a panning grain texture: flat renders alone would compress to almost
    nothing and decode far faster than real footage does."""
    records = []
    for i in range(count):
        path = folder / f"{i:04d}.mp4"
        if not path.exists():
            rng = np.random.default_rng([7, i])
            square, _ = render_video(CLASSES[i % len(CLASSES)], frames, 64, rng)
            video = torch.from_numpy(square).permute(0, 3, 1, 2).float()
            video = torch.nn.functional.interpolate(video, size=(height, width), mode="bilinear")
            grain = torch.from_numpy(rng.normal(0.0, 12.0, (3, height, width + 2 * frames))).float()
            video += torch.stack([grain[:, :, 2 * t : 2 * t + width] for t in range(frames)])  # 2 px/frame pan
            write_mp4(path, video.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), fps=fps)
        records.append(VideoRecord(path.name, i % len(CLASSES)))  # relative: the folder can move
    write_video_list(folder / "list.txt", records)
    return folder / "list.txt"


class PeerDataset(Dataset):
    """VideoMAE's way: decord inside ``__getitem__`` of a map-style dataset."""

    def __init__(self, records: list[VideoRecord], spec: PretrainClipSpec) -> None:
        self.records, self.spec = records, spec

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, sample_id: int):
        clip = load_pretrain_clip(self.records[sample_id], self.spec, epoch=0, sample_id=sample_id)
        return torch.from_numpy(clip.video), torch.from_numpy(clip.mask), clip.label


def micro_batches(plan: GlobalBatchPlan, steps: int, micro: int) -> list[list[int]]:
    return [ids.tolist() for s in range(steps) for ids in plan.micro_batches(s, 0, 1, micro)]


