"""VideoMAE pretraining step on one GPU: our model against `transformers`' VideoMAEForPreTraining
(same config, input, mask, batch and precision, in one run), and our DeepSpeed engine path with MFU.

    python -m benchmarks.gpu_videomae_step --out results.json            # ViT-B, 16×224², batch 32
    python -m benchmarks.gpu_videomae_step --size tiny --device cpu ...  # a smoke run anywhere

Clips/s is the median over timed steps after warm-up (CUDA events); peak memory is
torch.cuda.max_memory_allocated for the training step alone (model, optimizer state,
activations). MFU = model FLOPs per clip (forward + backward, from the model's own
dimensions) × clips/s / peak dense bf16 rate of the card.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Callable

import torch

from benchmarks import record
from internvideo.data.masking import tube_mask
from internvideo.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from internvideo.models.videomae import VideoMAEPretrain, videomae_config
from internvideo.optim import param_groups

PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def make_batch(cfg, batch: int, device: torch.device, seed: int = 0):
    """Random clips in [0, 1] and one tube mask per clip (B, N)."""
    import numpy as np

    enc = cfg.encoder
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, enc.num_frames, enc.img_size, enc.img_size, generator=g)  # (B, 3, T, H, W)
    t, h, w = enc.grid_size
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy(np.stack([tube_mask(t, h, w, cfg.mask_ratio, rng) for _ in range(batch)]))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    video = (pixels - mean) / std
    return video.to(device), pixels.to(device), mask.to(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call of ``step``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


# CUDA runtime calls that make the host wait for the device: while the host waits, it cannot queue the
# next kernels, so a step with one of these runs at host speed plus device speed rather than the larger.
SYNCING_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
HOST_READS = ("aten::_local_scalar_dense",)  # .item(), bool(tensor): a synchronisation each on a GPU
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def profile_step(step: Callable[[], None], device: torch.device, steps: int, step_seconds: float,
                 rows: int = 12) -> dict:
    """Where ``steps`` steps spend their time: the operators with the most self time (the device's on a
    GPU), and on a GPU how busy the device was over a timed step of ``step_seconds`` (the profiler's own
    overhead left out), and the kernel launches, synchronising calls and host reads a step makes, which
    tell a host-bound step (the device idles between kernels) from a device-bound one."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if on_gpu:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    ops = sorted(events, key=lambda op: getattr(op, attr), reverse=True)[:rows]
    summary = {"top_operators": [{"op": op.key, "ms_per_step": getattr(op, attr) / 1e3 / steps,
                                  "calls_per_step": op.count / steps} for op in ops]}
    if on_gpu:
        def calls(names: tuple[str, ...]) -> float:
            return sum(e.count for e in events if e.key in names) / steps
        busy = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3 / steps
        summary.update(device_busy_ms_per_step=busy, device_idle_fraction=max(0.0, 1 - busy / (step_seconds * 1e3)),
                       kernel_launches_per_step=calls(LAUNCH_CALLS), syncing_calls_per_step=calls(SYNCING_CALLS),
                       host_reads_per_step=calls(HOST_READS))
    return summary


def measure(name: str, build: Callable[[], Callable[[], None]], device, batch, warmup, iters,
            profile_steps: int = 0) -> dict:
    gc.collect()  # an engine of an earlier variant lives in reference cycles (its gradient hooks)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = build()
    seconds = time_steps(step, device, warmup, iters)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    result = {"name": name, "step_seconds": seconds, "clips_per_second": batch / seconds, "peak_memory_bytes": peak}
    if profile_steps:
        try:  # a profile that fails keeps the timing measured (a lent GPU's minutes are few)
            result["profile"] = profile_step(step, device, profile_steps, seconds)
        except Exception as err:  # noqa: BLE001
            result["profile"] = {"error": f"{type(err).__name__}: {err}"}
    del step
    return result


def ours_torch(cfg, video, pixels, mask, dtype, device, compile_model: bool = False,
               convolution_embedding: bool = False):
    """Plain torch's step; ``convolution_embedding``: the patch embedding as its convolution on a GPU too
    (the peer of ``layers.TubeletProjection``)."""
    def build():
        model = VideoMAEPretrain(cfg).to(device)
        if convolution_embedding:
            embed = model.encoder.patch_embed
            embed.forward = lambda x: torch.nn.Conv3d.forward(embed.proj, x).flatten(2).transpose(1, 2)
        if compile_model:
            model.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model.loss(video, pixels, mask)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    return build


def hf_torch(cfg, video, pixels, mask, dtype, device):
    from transformers import VideoMAEConfig as HFConfig
    from transformers import VideoMAEForPreTraining

    enc = cfg.encoder
    hf_cfg = HFConfig(image_size=enc.img_size, patch_size=enc.patch_size, num_channels=3, num_frames=enc.num_frames,
                      tubelet_size=enc.tubelet_size, hidden_size=enc.embed_dim, num_hidden_layers=enc.depth,
                      num_attention_heads=enc.num_heads, intermediate_size=int(enc.embed_dim * enc.mlp_ratio),
                      use_mean_pooling=False, layer_norm_eps=1e-6,
                      decoder_hidden_size=cfg.decoder_embed_dim, decoder_num_hidden_layers=cfg.decoder_depth,
                      decoder_num_attention_heads=cfg.decoder_num_heads,
                      decoder_intermediate_size=int(cfg.decoder_embed_dim * enc.mlp_ratio), norm_pix_loss=True)
    hf_video = video.permute(0, 2, 1, 3, 4).contiguous()  # HF takes (B, T, C, H, W)

    def build():
        model = VideoMAEForPreTraining._from_config(hf_cfg, attn_implementation="sdpa").to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(pixel_values=hf_video, bool_masked_pos=mask).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    return build


def ours_deepspeed(cfg, video, pixels, mask, batch, device, zero_stage: int, precision: str | None = None,
                   compile_backend: str = "off"):
    """The engine as a job builds it; ``precision``: ``train.precision`` (by default bf16 weights on a GPU
    and fp32 on a CPU, the rows recorded before ``auto`` meant bf16-autocast on a GPU);
    ``compile_backend``: ``train.compile``."""
    import torch.distributed as dist

    from workers import engine as ds

    def build():
        if not dist.is_initialized():
            ds.init_process_group(master_addr="127.0.0.1", master_port=29511, rank=0, world_size=1, timeout_s=120)
        model = VideoMAEPretrain(cfg)
        setting = precision or ("bf16" if device.type == "cuda" else "fp32")
        resolved = ds.resolve_precision(setting, on_gpu=device.type == "cuda")
        engine = ds.build_engine(model, param_groups(model, 0.05), micro_batch=batch, accumulation=1, world_size=1,
                                 lr=1e-4, min_lr=0.0, warmup_steps=0, total_steps=1000, betas=(0.9, 0.95),
                                 grad_clip=0.0, zero_stage=zero_stage, precision=resolved,
                                 compile_backend=compile_backend)
        inputs = video.to(resolved.weights)

        def step():
            loss = engine.module.reconstruction_loss(engine(inputs, mask), pixels, mask)
            engine.backward(loss)
            engine.step()
        return step
    return build


def median_round(name: str, rounds: list[dict], flops: float | None, peak: float | None) -> dict:
    """``name``'s median round (or its error), with every round's step time, the derived rates, and the
    profile of the round that took one. Rounds skipped at the deadline are left out."""
    errors = [r for r in rounds if "error" in r and not r.get("skipped")]
    measured = [r for r in rounds if "error" not in r]
    if errors or not measured:
        return (errors or rounds)[0]
    result = {k: v for k, v in record.middle_round(measured, "step_seconds").items() if k != "profile"}
    result["round_step_seconds"] = [r["step_seconds"] for r in measured]
    result.update(next(({"profile": r["profile"]} for r in measured if "profile" in r), {}))
    if flops:
        result["model_tflops_per_second"] = flops * result["clips_per_second"] / 1e12
        if peak:
            result["mfu"] = flops * result["clips_per_second"] / peak
    return result


def measure_in_turns(runs: dict[str, Callable[[], Callable]], args: argparse.Namespace, device: torch.device,
                     flops: float | None, peak: float | None, deadline: float | None = None) -> dict[str, dict]:
    """Each of ``runs`` (name → builder of a step) measured ``args.rounds`` times in turns; each reports
    its median round, or its error. No round starts after ``deadline`` (``time.monotonic()``); the first
    round of each also profiles ``args.profile`` steps."""
    def measured(name: str) -> Callable[[], dict]:
        rounds_done = 0

        def once() -> dict:
            nonlocal rounds_done
            rounds_done += 1
            if deadline and time.monotonic() > deadline:
                return {"name": name, "skipped": True, "error": "skipped: past the deadline"}
            profile_steps = args.profile if rounds_done == 1 else 0  # once: profiling takes seconds
            try:
                return measure(name, runs[name](), device, args.batch, args.warmup, args.iters, profile_steps)
            except Exception as err:  # noqa: BLE001 — report and keep measuring the others
                return {"name": name, "error": f"{type(err).__name__}: {err}"}
        return once

    rounds = record.in_turns({name: measured(name) for name in runs}, args.rounds)
    return {name: median_round(name, measured_rounds, flops, peak) for name, measured_rounds in rounds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--skip", action="append", default=[], help="ours | hf | deepspeed-z2 | ...")
    parser.add_argument("--zero-stages", default="2", help="DeepSpeed variants to run, e.g. 0,1,2")
    parser.add_argument("--compile", action="store_true", help="also run our model under torch.compile")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile each variant over STEPS steps and record its top operators")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the variants in turn this many times; each reports its median round")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="start no variant's round after this many seconds (a device lease's limit)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = videomae_config(args.size, img_size=args.img_size, num_frames=args.frames)
    video, pixels, mask = make_batch(cfg, args.batch, device)
    flops = VideoMAEPretrain(cfg).flops_per_clip(training=True) if args.size != "giant" else None
    peak = peak_flops(device)
    runs = {"ours": lambda: ours_torch(cfg, video, pixels, mask, dtype, device),
            "hf": lambda: hf_torch(cfg, video, pixels, mask, dtype, device),
            **{f"deepspeed-z{z}": (lambda z=z: ours_deepspeed(cfg, video, pixels, mask, args.batch, device, z))
               for z in map(int, args.zero_stages.split(","))}}
    if args.compile:
        runs["ours-compiled"] = lambda: ours_torch(cfg, video, pixels, mask, dtype, device, compile_model=True)
    deadline = time.monotonic() + args.deadline_s if args.deadline_s else None
    results = list(measure_in_turns({n: r for n, r in runs.items() if n not in args.skip}, args, device,
                                    flops, peak, deadline).values())
    for result in results:
        print(json.dumps(result), flush=True)

    by_name = {r["name"]: r for r in results if "clips_per_second" in r}
    summary = {
        "config": {"size": args.size, "img_size": args.img_size, "frames": args.frames, "batch": args.batch,
                   "mask_ratio": cfg.mask_ratio, "dtype": str(dtype), "flops_per_clip_train": flops},
        "machine": {**record.machine(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "threads": torch.get_num_threads()},
        "results": results,
    }
    if "ours" in by_name and "hf" in by_name:
        summary["ours_over_hf_throughput"] = by_name["ours"]["clips_per_second"] / by_name["hf"]["clips_per_second"]
        if by_name["ours"]["peak_memory_bytes"]:
            summary["ours_over_hf_peak_memory"] = (by_name["ours"]["peak_memory_bytes"]
                                                   / by_name["hf"]["peak_memory_bytes"])
    if "ours" in by_name:  # the engine's step against the same model's plain-torch step
        summary["engine_over_plain"] = {name: r["clips_per_second"] / by_name["ours"]["clips_per_second"]
                                        for name, r in by_name.items() if name.startswith("deepspeed")}
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
