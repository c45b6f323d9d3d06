"""Our decode pool against the loader VideoMAE uses, on the same CPU budget, in one run.

Peer: a torch ``DataLoader`` with ``num_workers`` processes whose ``__getitem__`` decodes with
decord and applies the same transforms (the very ``load_pretrain_clip`` our workers run: same
sampler, same reduced-size decode, same multi-scale crop and tube mask), batched by the default
collate. Ours: a ``DecodePool`` of Ray actors (one CPU each, a torchdata pipeline inside) read
through a ``ClipStream``. Both decode the same micro-batches of the same sample plan; the clock
starts when the first micro-batch arrives (start-up excluded for both) and stops at the last.

``--job``: also run a real training job through the coordinator with an autoscaling pool and
report the data-wait fraction it settles at.

    python -m benchmarks.decode_pool --out benchmarks/results/cpu_decode_pool.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from torch.utils.data import DataLoader

from benchmarks.loaders import PeerDataset, micro_batches, write_videos
from internvideo.data.formats import VideoSource
from internvideo.data.order import GlobalBatchPlan
from internvideo.data.pipeline import MaskedClips, PretrainClipSpec
from internvideo.tasks.pretrain_mae import PretrainMAEConfig
from workers.decode import ClipStream, Dataset, DecodePool, PoolSpec

ACCUMULATION = 4  # micro-batches per step of the plan


def timed(batches) -> tuple[float, int]:
    """Clips per second from the first batch's arrival to the last's, over the clips after the first."""
    iterator = iter(batches)
    next(iterator)
    start, clips = time.perf_counter(), 0
    for batch in iterator:
        clips += len(batch[0] if isinstance(batch, (list, tuple)) else batch["video"])
    return clips / (time.perf_counter() - start), clips


def run_peer(source: VideoSource, spec: PretrainClipSpec, plan: GlobalBatchPlan, steps: int, micro: int,
             workers: int) -> dict:
    torch.set_num_threads(1)
    # Workers from a forkserver, not forked from this process: decord is not safe to use after a fork
    # from a process that used it (a forked worker segfaulted in the second repeat); a forkserver's
    # workers start from a process that never did.
    loader = DataLoader(PeerDataset(source.read(), spec), batch_sampler=micro_batches(plan, steps, micro),
                        num_workers=workers, prefetch_factor=4, persistent_workers=False,
                        multiprocessing_context="forkserver")
    clips_per_s, clips = timed(loader)
    return {"loader": "torch DataLoader", "workers": workers, "clips_per_s": clips_per_s, "clips": clips}


def run_pool(source: VideoSource, spec: PretrainClipSpec, plan: GlobalBatchPlan, steps: int, micro: int,
             workers: int, threads: int) -> dict:
    """``workers`` actors of ``threads`` decode threads and as many CPUs each."""
    ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
    try:
        pool = DecodePool.create(PoolSpec(job_id="bench", data=Dataset(source, MaskedClips(spec)), seed=spec.seed,
                                          cpus=float(threads),
                                          threads=threads, host="127.0.0.1"), workers, timeout_s=120)
        stream = ClipStream(pool.actors, plan, rank=0, world_size=1, micro_batch=micro, end_step=steps,
                            max_in_flight=4 * workers * threads, timeout_s=120)
        clips_per_s, clips = timed(stream)
        pool.shutdown()
    finally:
        ray.shutdown()
    return {"loader": "decode pool", "workers": workers, "threads": threads, "clips_per_s": clips_per_s,
            "clips": clips}


def run_training_job(workdir: Path, list_path: Path, steps: int) -> dict:
    """The tiny-cpu pretraining job, one trainer, a pool that starts at 1 decode worker and may grow to
    3: the data-wait fraction per step, and when the pool changed size."""
    from coordinator.client import JobClient, read_config
    from coordinator.launch import launch_coordinator
    from protos.internvideo.v1 import jobs_pb2 as pb

    server, endpoints = launch_coordinator(workdir / "state", workdir / "coordinator.log")
    try:
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            overrides = [f"data.train_list={list_path}", f"train.steps={steps}", "train.checkpoint_every=0",
                         "data.decode_workers=1", "data.decode_workers_max=3", "data.autoscale_window=6"]
            job = client.submit("pretrain-mae", read_config("tiny-cpu"), overrides, min_workers=1, max_workers=1)
            waits, sizes, changes = [], [], []
            for event in client.watch(job.job_id):
                body = event.WhichOneof("body")
                if body == "progress":
                    waits.append(event.progress.data_wait_fraction)
                    sizes.append(event.progress.decode_workers)
                elif body == "decode_pool_resized":
                    r = event.decode_pool_resized
                    changes.append({"after_step": len(waits), "from": r.from_workers, "to": r.to_workers,
                                    "data_wait_fraction": r.data_wait_fraction, "reason": r.reason})
            final = client.get(job.job_id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    settled = waits[changes[-1]["after_step"]:] if changes else waits
    return {"steps": steps, "state": pb.JobState.Name(final.state), "pool_changes": changes, "pool_size_per_step": sizes,
            "data_wait_fraction_per_step": [round(w, 4) for w in waits],
            "mean_data_wait_first_6_steps": statistics.fmean(waits[:6]),
            "mean_data_wait_after_last_change": statistics.fmean(settled),
            "clips_per_second": final.result.metrics["clips_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--video-frames", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job", action="store_true", help="also run an autoscaling training job")
    parser.add_argument("--job-steps", type=int, default=60)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "internvideo-bench-videos")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    args.data_dir.mkdir(parents=True, exist_ok=True)
    list_path = write_videos(args.data_dir, args.videos, args.height, args.width, args.video_frames, fps=25)
    config = PretrainMAEConfig.model_validate({
        "model": {"size": "small", "img_size": args.input_size, "num_frames": args.frames},
        "data": {"train_list": str(list_path), "sampling_rate": args.rate},
        "train": {"steps": args.steps, "global_batch": args.micro * ACCUMULATION, "micro_batch": args.micro}})
    spec, source = config.clip_spec(), config.data.source()
    plan = GlobalBatchPlan(args.videos, args.micro * ACCUMULATION, seed=spec.seed)
    runs = []
    for repeat in range(args.repeats):  # interleaved, so drift in the machine hits both alike
        for workers in args.workers:
            for run in (run_peer(source, spec, plan, args.steps, args.micro, workers),
                        run_pool(source, spec, plan, args.steps, args.micro, workers, threads=1)):
                runs.append({**run, "repeat": repeat})
                print(json.dumps(runs[-1]), flush=True)
        if max(args.workers) > 1:  # the same CPUs as threads of one worker: the pipeline inside it
            run = run_pool(source, spec, plan, args.steps, args.micro, 1, threads=max(args.workers))
            runs.append({**run, "repeat": repeat})
            print(json.dumps(runs[-1]), flush=True)

    def median(loader: str, workers: int, threads: int = 1) -> float:
        return statistics.median(r["clips_per_s"] for r in runs if r["loader"] == loader
                                 and r["workers"] == workers and r.get("threads", 1) == threads)

    summary = {f"{w} CPUs": {"pool": median("decode pool", w), "dataloader": median("torch DataLoader", w),
                             "ratio": median("decode pool", w) / median("torch DataLoader", w)}
               for w in args.workers}
    if max(args.workers) > 1:
        lo, hi = min(args.workers), max(args.workers)
        summary[f"{hi} CPUs"][f"pool, 1 worker x {hi} threads"] = median("decode pool", 1, hi)
        summary["pool_scaling"] = median("decode pool", hi) / median("decode pool", lo)
        summary["dataloader_scaling"] = median("torch DataLoader", hi) / median("torch DataLoader", lo)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "decode_short_side": spec.decode.short_side, "runs": runs, "summary": summary}
    print(json.dumps(summary, indent=1))
    if args.job:
        with tempfile.TemporaryDirectory() as workdir:
            result["training_job"] = run_training_job(Path(workdir), list_path, args.job_steps)
        print(json.dumps({k: v for k, v in result["training_job"].items() if "per_step" not in k}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
