"""Every GPU row of issue 14's table in one run on one GPU, one JSON.

    python -m benchmarks.gpu_suite --out benchmarks/results/gpu_suite_h100.json
    python -m benchmarks.gpu_suite --device cpu --size tiny --img-size 64 --frames 8 --batch 4   # a smoke run

What it measures, each against its peer in the same run:
- the DeepSpeed engine's step (as ``workers.engine.build_engine`` builds it for a job: ZeRO 0 and 2
  under ``train.precision=bf16-autocast``) over plain torch's (fused AdamW, bf16 autocast) for VideoMAE
  ViT-B, 16 × 224², and ViT-L, with MFU and, from one profiled round of each, its top operators by device
  time, how busy the device was, and the kernel launches and synchronising calls a step makes (the CPU
  smoke run's autocast rows are bf16 against an fp32 peer); for the first size also the engine at ZeRO 0
  and 2 with bf16 weights, and plain torch with the patch embedding as cuDNN's convolution (the peer of
  ``layers.TubeletProjection``);
- one decode core's clips/s for VideoMAE's clip (16 × 4 at 224² from 320 × 256 H.264, 300 frames)
  at 1 and 4 clips a video (``data.repeated_sampling``), in the suite's process and in a fresh one, and
  from those and the engine's clips/s, the decode cores one GPU needs;
- last, for the sizes of ``--compile-sizes`` (ViT-B), plain torch and the autocast engine compiled
  (``train.compile=inductor``; each round compiles afresh, from inductor's cache after the first).

On an H100 (2026-11-27) a first run's ViT-B rows with decoding took 355 s, and ViT-L's eager rows (then
with bf16 weights too) did not finish in the next 190 s; a second run, ViT-L under autocast only, did all
in 379 s. No round starts after ``--deadline-s``, and the JSON is rewritten after each part: a run cut
short by the device's 10-minute limit still brings back what it measured.

What it cannot: the job path through the coordinator and Ray (the GPU machine has no Ray's wheel).
A variant whose library is missing (DeepSpeed, decord) is recorded with its error; the others still run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import record
from benchmarks.gpu_videomae_step import make_batch, measure_in_turns, ours_deepspeed, ours_torch, peak_flops
from internvideo.models.videomae import VideoMAEPretrain, videomae_config

REPOSITORY = Path(__file__).resolve().parents[1]


def engine_rows(size: str, args: argparse.Namespace, device: torch.device, compiled: bool,
                deadline: float | None, extras: bool = False) -> dict:
    """Plain torch and the engine for one model size, in turns over ``args.rounds``: eager (the engine at
    ZeRO 0 and 2 under bf16 autocast), or both compiled (the engine at ZeRO-0, what a one-rank job runs:
    ``workers.engine.engine_zero_stage``). ``extras``: also plain torch with the
    patch embedding as a convolution, and the engine at ZeRO 0 and 2 with bf16 weights."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = videomae_config(size, img_size=args.img_size, num_frames=args.frames)
    video, pixels, mask = make_batch(cfg, args.batch, device)
    flops = VideoMAEPretrain(cfg).flops_per_clip(training=True)
    if compiled:
        runs = {"plain-compiled": lambda: ours_torch(cfg, video, pixels, mask, dtype, device, compile_model=True),
                "engine-z0-autocast-compiled": lambda: ours_deepspeed(cfg, video, pixels, mask, args.batch, device,
                                                                      0, "bf16-autocast", "inductor")}
    else:
        # fp32 weights and optimizer, the forward under autocast (the plain loop's precision), at ZeRO-2 and
        # at ZeRO-0, where DeepSpeed steps the optimizer without a wrapper (``workers.engine.ClippedAdamW``);
        # bf16 weights for the first size only
        runs = {"plain": lambda: ours_torch(cfg, video, pixels, mask, dtype, device),
                **({"plain-conv-embed": lambda: ours_torch(cfg, video, pixels, mask, dtype, device,
                                                           convolution_embedding=True)} if extras else {}),
                **{f"engine-z{z}": (lambda z=z: ours_deepspeed(cfg, video, pixels, mask, args.batch, device, z))
                   for z in ((0, 2) if extras else ())},
                **{f"engine-z{z}-autocast": (lambda z=z: ours_deepspeed(cfg, video, pixels, mask, args.batch,
                                                                        device, z, "bf16-autocast"))
                   for z in (0, 2)}}
    return {"config": {"size": size, "img_size": args.img_size, "frames": args.frames, "batch": args.batch,
                       "dtype": str(dtype), "flops_per_clip_train": flops},
            "results": measure_in_turns(runs, args, device, flops, peak_flops(device), deadline)}


def add_ratios(rows: dict) -> None:
    """Each engine variant over the plain run of its own compile mode, and each compiled run over eager."""
    rate = {name: r["clips_per_second"] for name, r in rows["results"].items() if "clips_per_second" in r}

    def peer(name: str) -> str:
        return "plain-compiled" if name.endswith("-compiled") else "plain"
    rows["engine_over_plain"] = {name: rate[name] / rate[peer(name)] for name in rate
                                 if name.startswith("engine") and peer(name) in rate}
    rows["compiled_over_eager"] = {name: rate[f"{name}-compiled"] / rate[name] for name in rate
                                   if f"{name}-compiled" in rate}


def decode_rows(args: argparse.Namespace) -> dict:
    """One decode core's clips/s at 1 and 4 clips a video (``benchmarks.decode_per_clip``); leaves torch
    on one thread (the caller restores its own)."""
    try:
        from benchmarks.decode_per_clip import clips_per_second, peer_clips_per_second
        from benchmarks.loaders import write_videos
    except ImportError as err:
        return {"error": f"{type(err).__name__}: {err}"}
    torch.set_num_threads(1)
    folder = Path(tempfile.gettempdir()) / "internvideo-bench-300f"
    folder.mkdir(parents=True, exist_ok=True)
    list_path = write_videos(folder, 24, 256, 320, 300, fps=25)
    # Also in a process of its own: on an H100 node a core of the suite's process, after the engines and
    # inductor's compile workers, decoded half of what this repository's other measurements had seen.
    fresh = argparse.Namespace(videos=24, video_frames=300, clips=64, micro=8, data_dir=folder)
    try:
        rates = {str(r): statistics.median(clips_per_second(list_path, 24, r, 64, 8) for _ in range(2)) for r in (1, 4)}
    except Exception as err:  # noqa: BLE001 — decord missing, say
        return {"error": f"{type(err).__name__}: {err}"}
    try:
        in_a_fresh_process = {str(r): peer_clips_per_second(REPOSITORY, r, fresh) for r in (1, 4)}
    except Exception as err:  # noqa: BLE001 — keep the rates measured, say why these are missing
        in_a_fresh_process = {"error": f"{type(err).__name__}: {err}"}
    return {"clips_per_second_per_core": rates, "in_a_fresh_process": in_a_fresh_process}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", action="append", help="model sizes (default: base and large)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=5, metavar="STEPS")
    parser.add_argument("--compile-sizes", nargs="*", default=["base"],
                        help="sizes also measured compiled (each compilation takes tens of seconds)")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--deadline-s", type=float, default=540,
                        help="start no round after this many seconds (a lent GPU's command runs 10 minutes)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    began = time.perf_counter()
    threads = torch.get_num_threads()
    suite = {"machine": {**record.machine(), "threads": threads,
                         "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
             "engine": {}}
    sizes = args.size or ["base", "large"]
    deadline = time.monotonic() + args.deadline_s if args.deadline_s else None

    def save() -> None:
        suite["seconds"] = time.perf_counter() - began
        if args.out:
            record.save(suite, args.out)

    # Every size eager, the decode cores after the first, then the compiled runs (each compilation takes
    # tens of seconds); the JSON is written after each part, and no round starts past the deadline, so a
    # run cut short by a device's time limit still brings back what it measured.
    for index, size in enumerate(sizes):
        suite["engine"][size] = engine_rows(size, args, device, compiled=False, deadline=deadline,
                                            extras=index == 0)
        add_ratios(suite["engine"][size])
        if index == 0 and not args.skip_decode:
            suite["decode"] = decode_rows(args)
            torch.set_num_threads(threads)
            add_decode_cores_needed(suite["engine"][size]["results"], suite["decode"])
        save()
    for size in args.compile_sizes:
        compiled = engine_rows(size, args, device, compiled=True, deadline=deadline)
        rows = suite["engine"].setdefault(size, {"config": compiled["config"], "results": {}})
        rows["results"].update(compiled["results"])
        add_ratios(rows)
        if "decode" in suite:
            add_decode_cores_needed(rows["results"], suite["decode"])
        save()
    if not args.out:
        print(json.dumps(suite, indent=1))
    return 0


def add_decode_cores_needed(results: dict[str, dict], decode: dict) -> None:
    """The decode cores this GPU needs to train each variant at full speed, at each clips-a-video."""
    per_core = decode.get("clips_per_second_per_core", {})
    for row in results.values():
        if "clips_per_second" in row and per_core:
            row["decode_cores_needed"] = {r: row["clips_per_second"] / rate for r, rate in per_core.items()}


if __name__ == "__main__":
    sys.exit(main())
