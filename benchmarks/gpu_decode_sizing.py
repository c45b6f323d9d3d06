"""How many decode cores one GPU needs: VideoMAE ViT-B pretraining (16 × 224², mask 0.9, bf16) on the
GPU against the clips/s that N loader processes decode on that machine's CPUs, and the data-wait
fraction of the training loop when it is fed by them.

Runs without Ray (the GPU machine has none): the loader is the peer of ``benchmarks.decode_pool``
(``DataLoader`` workers running the same ``load_pretrain_clip`` our decode workers run), so the
decode rate per core is the quantity a decode pool of the same size would have to match.

    python -m benchmarks.gpu_decode_sizing --data .benchdata/list.txt --out results.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.gpu_videomae_step import peak_flops
from benchmarks.loaders import PeerDataset, micro_batches
from internvideo.data.decode import DecodeOptions
from internvideo.data.lists import read_video_list
from internvideo.data.order import GlobalBatchPlan
from internvideo.data.pipeline import PretrainClipSpec
from internvideo.data.transforms import normalize_clips
from internvideo.models.videomae import VideoMAEPretrain, videomae_config


def loader(dataset: PeerDataset, plan: GlobalBatchPlan, steps: int, batch: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=micro_batches(plan, steps, batch), num_workers=workers,
                      prefetch_factor=2, pin_memory=True, persistent_workers=False)


def decode_rate(dataset: PeerDataset, plan: GlobalBatchPlan, batch: int, workers: int, clips: int) -> float:
    """Clips/s from the first batch's arrival to the last's. Each worker decodes at least 8 batches,
    so the batches already decoded when the clock starts (up to one per worker) weigh little."""
    batches = iter(loader(dataset, plan, max(8 * workers, clips // batch), batch, workers))
    next(batches)
    start, count = time.perf_counter(), 0
    for video, _, _ in batches:
        count += len(video)
    return count / (time.perf_counter() - start)


def to_model(video_uint8: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, H, W, 3) uint8 on the host → normalised bf16 input and [0, 1] targets on the GPU."""
    video = video_uint8.to(device, non_blocking=True)
    return normalize_clips(video).to(torch.bfloat16), video.permute(0, 4, 1, 2, 3).float().div_(255.0)


def train(model: VideoMAEPretrain, optimizer: torch.optim.Optimizer, batches, device: torch.device) -> dict:
    """Train over ``batches`` (the first 3 are warm-up); data-wait = time blocked on the next batch."""
    waits, steps = [], []
    iterator = iter(batches)
    for i in range(10**9):
        began = time.perf_counter()
        try:
            video, mask, _ = next(iterator)
        except StopIteration:
            break
        got = time.perf_counter()
        x, pixels = to_model(video, device)
        mask = mask.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.reconstruction_loss(model(x, mask), pixels, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 3:
            waits.append(got - began)
            steps.append(time.perf_counter() - began)
    return {"clips_per_s": len(video) * len(steps) / sum(steps), "data_wait_fraction": sum(waits) / sum(steps),
            "median_step_s": statistics.median(steps), "steps": len(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a video list (benchmarks.loaders.write_videos)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 14])
    parser.add_argument("--clips", type=int, default=192, help="clips per decode-rate run")
    parser.add_argument("--steps", type=int, default=150, help="training steps (far more than the loader prefetches)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    records = read_video_list(args.data)
    # The benchmark videos are 320×256: their short side is VideoMAE's 256 already, so no scaling.
    spec = PretrainClipSpec(num_frames=16, sampling_rate=4, input_size=224, patch_size=16, tubelet_size=2,
                            mask_ratio=0.9, seed=0, decode=DecodeOptions(short_side=None))
    dataset = PeerDataset(records, spec)
    plan = GlobalBatchPlan(len(records), args.batch, seed=0)
    result = {"machine": {"gpu": torch.cuda.get_device_name(device), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "config": {k: str(v) for k, v in vars(args).items()}, "decode": {}}

    for workers in args.workers:
        result["decode"][workers] = decode_rate(dataset, plan, args.batch, workers, args.clips)
        print(f"decode, {workers} workers: {result['decode'][workers]:.1f} clips/s", flush=True)

    torch.manual_seed(0)
    cfg = videomae_config("base", img_size=224, num_frames=16, mask_ratio=0.9)
    model = VideoMAEPretrain(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4, fused=True)
    resident = next(iter(loader(dataset, plan, 1, args.batch, 4)))
    compute = train(model, optimizer, [resident] * args.steps, device)  # the GPU alone: no loading
    fed = train(model, optimizer, loader(dataset, plan, args.steps, args.batch, max(args.workers)), device)
    per_core = result["decode"][1]
    flops = model.flops_per_clip(training=True)
    result.update({
        "gpu_only": compute, "fed_by_loader": {**fed, "workers": max(args.workers)},
        "decode_cores_per_gpu": compute["clips_per_s"] / per_core,
        "mfu_gpu_only": (flops * compute["clips_per_s"] / peak_flops(device)) if peak_flops(device) else None,
    })
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
