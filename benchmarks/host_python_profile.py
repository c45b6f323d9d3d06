"""Where the host's time goes in a training step: cProfile over steps of plain torch and of the engine.

On an H100 the engine's ViT-B step at ZeRO-0 under autocast launched 17 kernels more than plain torch's
and read nothing back, yet left the device idle 28 % of the time against 11 % (``results/
gpu_suite_h100.json``): what is left is the host's Python. This runs each variant's step (the builders of
``gpu_videomae_step``), timed by its ``time_steps`` and then under cProfile, the device synchronised after every step,
and records each variant's host seconds a step and its functions by their own time, so that the engine's
additions show against plain torch's.

    python -m benchmarks.host_python_profile --out benchmarks/results/gpu_host_python_profile_h100.json
    python -m benchmarks.host_python_profile --device cpu --size tiny --img-size 64 --frames 8 --batch 2   # smoke
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
from pathlib import Path

import torch

from benchmarks import record
from benchmarks.gpu_videomae_step import make_batch, ours_deepspeed, ours_torch, time_steps
from internvideo.models.videomae import videomae_config


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profiled(step, device: torch.device, warmup: int, steps: int, top: int) -> dict:
    """``step``'s seconds a step (the median, the device synchronised after each) without and with cProfile
    (the mean), and its top functions by own time."""
    seconds = time_steps(step, device, warmup, steps)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
        synchronize(device)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return {"step_seconds": seconds,
            "profiled_step_seconds": stats.total_tt / steps,  # type: ignore[attr-defined]
            "top_by_own_time": [{"function": f"{Path(file).name}:{line}:{name}", "calls_per_step": calls / steps,
                                 "own_ms_per_step": own * 1e3 / steps, "cumulative_ms_per_step": cum * 1e3 / steps}
                                for (file, line, name), (_, calls, own, cum, _) in rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="base")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = videomae_config(args.size, img_size=args.img_size, num_frames=args.frames)
    video, pixels, mask = make_batch(cfg, args.batch, device)
    variants = {"plain": ours_torch(cfg, video, pixels, mask, dtype, device),
                **{f"engine-z{z}-autocast": ours_deepspeed(cfg, video, pixels, mask, args.batch, device, z,
                                                           "bf16-autocast") for z in (0, 2)}}
    results = {}
    for name, build in variants.items():
        results[name] = profiled(build(), device, args.warmup, args.steps, args.top)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {"machine": {**record.machine(), "device": torch.cuda.get_device_name(device)
                          if device.type == "cuda" else "cpu"},
              "config": {"size": args.size, "img_size": args.img_size, "frames": args.frames, "batch": args.batch,
                         "warmup": args.warmup, "steps": args.steps},
              "results": results}
    record.save(report, args.out or Path("/dev/null"))
    for name, row in results.items():
        print(f"{name}: {row['step_seconds'] * 1e3:.1f} ms a step, {row['profiled_step_seconds'] * 1e3:.1f} "
              "under cProfile")
        for entry in row["top_by_own_time"][:12]:
            print(f"  {entry['own_ms_per_step']:7.2f} ms {entry['calls_per_step']:7.0f}×  {entry['function']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
