"""What the DeepSpeed engine adds to a training step on the host, per configuration, measured on a CPU.

On an H100 the engine's ViT-B step took 82–125 ms against plain torch's 48 ms, with the same kernels
taking the same device time (``results/gpu_suite_h100.json``): the difference is the host's work. This
measures that work where no GPU is needed: VideoMAE ViT-B's module tree (its depth-12 encoder and 4-block
decoder: the same parameter tensors, hooks and optimizer groups) at width 16 on 8 tokens, so that the
arithmetic is negligible and a step's time is the host's (Python, the dispatcher, one small kernel per
operation). For each variant, one profiled step counts the operations that would each launch a GPU kernel
(the profiler's leaf ``aten::`` operations) and the reads of a tensor's value on the host (each one a
synchronisation on a GPU: ``aten::_local_scalar_dense``).

Every engine is built by ``workers.engine.build_engine`` with a GPU's ZeRO settings (the stage as asked,
contiguous gradient buckets): on this CPU a world of one would otherwise run ZeRO-2 as ZeRO-1.

    python -m benchmarks.engine_host_overhead --out benchmarks/results/cpu_engine_host_overhead.json
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import deepspeed
import torch

from benchmarks import record
from benchmarks.gpu_videomae_step import make_batch, time_steps
from internvideo.models.videomae import VideoMAEPretrain, videomae_config
from internvideo.optim import param_groups
from workers import engine as ds

HOST_READS = ("aten::_local_scalar_dense",)


def narrow_vit_b() -> object:
    """ViT-B's VideoMAE with every width 16: 8 tokens of 2 × 16² tubelets from 4 × 32² clips."""
    return videomae_config("base", img_size=32, num_frames=4,
                           encoder_overrides={"embed_dim": 16, "num_heads": 2},
                           decoder_embed_dim=16, decoder_num_heads=2)


@contextlib.contextmanager
def ds_config_extra(extra: dict) -> Iterator[None]:
    """``deepspeed.initialize`` with ``extra`` merged into each section of the config it is given."""
    initialize = deepspeed.initialize

    def merged(*args, config: dict, **kwargs):
        config = {**config, **{k: {**config.get(k, {}), **v} for k, v in extra.items()}}
        return initialize(*args, config=config, **kwargs)
    deepspeed.initialize = merged
    try:
        yield
    finally:
        deepspeed.initialize = initialize


def plain_step(cfg, video, pixels, mask) -> Callable[[], None]:
    model = VideoMAEPretrain(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        model.loss(video, pixels, mask).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def engine_step(cfg, video, pixels, mask, stage: int, precision: str, extra: dict | None = None,
                grad_clip: float = 1.0) -> Callable[[], None]:
    model = VideoMAEPretrain(cfg)
    resolved = ds.resolve_precision(precision, on_gpu=False)
    with ds_config_extra({"zero_optimization": {"stage": stage, "contiguous_gradients": True}, **(extra or {})}):
        engine = ds.build_engine(model, param_groups(model, 0.05), micro_batch=len(video), accumulation=1,
                                 world_size=1, lr=1e-4, min_lr=0.0, warmup_steps=0, total_steps=1000,
                                 betas=(0.9, 0.95), grad_clip=grad_clip, zero_stage=stage, precision=resolved)
    inputs = video.to(resolved.weights)

    def step() -> None:
        engine.backward(engine.module.reconstruction_loss(engine(inputs, mask), pixels, mask))
        engine.step()
    return step


def host_counts(step: Callable[[], None]) -> dict[str, float]:
    """One step's leaf operations (a GPU kernel launch each, roughly) and host reads of tensor values."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    return {"leaf_ops": sum(1 for e in events if not e.cpu_children),
            "host_reads": sum(1 for e in events if e.name in HOST_READS)}


def measured(build: Callable[[], Callable[[], None]], warmup: int, iters: int) -> dict:
    step = build()
    return {"step_ms": time_steps(step, torch.device("cpu"), warmup, iters) * 1e3, **host_counts(step)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ds.init_process_group(master_addr="127.0.0.1", master_port=29517, rank=0, world_size=1, timeout_s=120)
    cfg = narrow_vit_b()
    video, pixels, mask = make_batch(cfg, 2, torch.device("cpu"))
    no_overflow_check = {"bf16": {"check_grad_overflow": False}}
    variants = {
        "plain": lambda: plain_step(cfg, video, pixels, mask),
        "engine-z0-bf16": lambda: engine_step(cfg, video, pixels, mask, 0, "bf16"),
        "engine-z2-bf16": lambda: engine_step(cfg, video, pixels, mask, 2, "bf16"),
        "engine-z2-bf16-no-overflow-check": lambda: engine_step(cfg, video, pixels, mask, 2, "bf16",
                                                                no_overflow_check),
        "engine-z2-bf16-no-clipping": lambda: engine_step(cfg, video, pixels, mask, 2, "bf16", grad_clip=0.0),
        "engine-z0-autocast": lambda: engine_step(cfg, video, pixels, mask, 0, "bf16-autocast"),
        "engine-z2-autocast": lambda: engine_step(cfg, video, pixels, mask, 2, "bf16-autocast"),
    }
    rounds = record.in_turns({name: (lambda b=build: measured(b, args.warmup, args.iters))
                              for name, build in variants.items()}, args.rounds)
    results = {name: {**record.middle_round(rs, "step_ms"), "round_step_ms": [r["step_ms"] for r in rs]}
               for name, rs in rounds.items()}
    plain = results["plain"]
    for row in results.values():
        row["host_ms_over_plain"] = row["step_ms"] - plain["step_ms"]
        row["leaf_ops_over_plain"] = row["leaf_ops"] - plain["leaf_ops"]
    parameters = sum(1 for _ in VideoMAEPretrain(cfg).parameters())
    record.save({"config": {"model": "VideoMAE ViT-B module tree at width 16, 8 tokens, batch 2, 1 thread",
                            "parameter_tensors": parameters, "warmup": args.warmup, "iters": args.iters,
                            "rounds": args.rounds},
                 "machine": record.machine(), "results": results}, args.out or Path("/dev/null"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
