"""Evaluation throughput through the system against a plain single-process loop, in one run.

The same ``eval-recognition`` (tiny-cpu-eval: 2 temporal clips × 3 crops per video, micro-batches of
2 videos) of the same classifier over the same videos, two ways:

- **system**: a job through a real coordinator — the list in committed shards, the videos decoded by
  the decode pool (Ray actors), ``--workers`` inference workers;
- **plain loop**: one process, every core for torch, each micro-batch decoded then predicted in turn
  (decode and model never overlap) — what a user's evaluation script does.

Throughput is videos per second of the shards' time (``eval_seconds``: the evaluation itself, as a
running job measures it) and of the whole job from submit to its result (start-up included). The
predictions of both must agree (same views, same model; float sums in another order may flip a
near-tie of the untrained model): the benchmark checks their top-1 differ by at most one video.

    python -m benchmarks.eval_throughput [--videos 600] [--workers 2] [--out benchmarks/results/eval_throughput_cpu.json]
"""
from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.record import machine, save
from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.synthetic import write_synthetic_dataset
from internvideo.tasks import get_task_type
from internvideo.tasks.classification import ClassifierModel, build_classifier
from protos.internvideo.v1 import jobs_pb2 as pb


def plain_loop(config: dict) -> tuple[float, float]:
    """(seconds, top-1) of the evaluation in this process, one micro-batch after another."""
    task_type = get_task_type("eval-recognition")
    evaluation = task_type(task_type.config_type.model_validate(config))
    records = evaluation.config.data.val_source().read()
    torch.set_num_threads(os.cpu_count() or 1)
    began = time.perf_counter()
    model = evaluation.build_model().eval()
    sample, micro = evaluation.sample_fn(), evaluation.config.eval.micro_batch
    scores, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(records), micro):
            arrays = [sample(records, 0, i) for i in range(start, min(start + micro, len(records)))]
            batch = {name: np.stack([a[name] for a in arrays]) for name in arrays[0]}
            out = evaluation.predict(model, evaluation.to_tensors(batch, torch.device("cpu")))
            scores.append(out["scores"].numpy())
            labels.append(out["label"].numpy())
    seconds = time.perf_counter() - began
    return seconds, float((np.concatenate(scores).argmax(1) == np.concatenate(labels)).mean())


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="internvideo-eval-throughput-"))
    dataset = write_synthetic_dataset(root / "data", num_videos=args.videos * 4 // 3, num_frames=32, size=64,
                                      seed=0, val_fraction=0.75)
    config = yaml.safe_load(read_config("tiny-cpu-eval"))
    torch.manual_seed(0)
    weights = root / "classifier.pt"
    torch.save(build_classifier(ClassifierModel.model_validate(config["model"]), drop_path=0.0).state_dict(), weights)
    config["model"]["init"] = str(weights)
    config["data"]["val_list"] = str(dataset.val_list)
    config["eval"]["shard_size"] = args.shard_size
    videos = len(dataset.val_list.read_text().splitlines())

    process, endpoints = launch_coordinator(root / "state", root / "coordinator.log")
    try:
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            submitted = time.monotonic()
            job = client.submit("eval-recognition", yaml.safe_dump(config), [
                f"data.decode_workers={args.decode_workers}"], min_workers=args.workers, max_workers=args.workers)
            for _ in client.watch(job.job_id):
                pass
            wall = time.monotonic() - submitted
            job = client.get(job.job_id)
            if job.state != pb.JOB_STATE_SUCCEEDED:
                raise RuntimeError(f"the evaluation ended {pb.JobState.Name(job.state)}: {job.message}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    plain_seconds, plain_top1 = plain_loop(config)
    system = job.result.metrics
    if abs(system["top1"] - plain_top1) * videos > 1:
        raise RuntimeError(f"the system's top-1 {system['top1']} is not the plain loop's {plain_top1}")
    views = config["test"]["clips"] * config["test"]["crops"]
    return {
        "machine": machine(),
        "config": {"preset": "tiny-cpu-eval", "videos": videos, "views_per_video": views,
                   "workers": args.workers, "decode_workers": args.decode_workers, "shard_size": args.shard_size,
                   "micro_batch": config["eval"]["micro_batch"]},
        "system": {"videos_per_second": system["clips_per_second"], "eval_seconds": system["eval_seconds"],
                   "submit_to_result_seconds": wall, "videos_per_second_submit_to_result": videos / wall,
                   "top1": system["top1"]},
        "plain_loop": {"videos_per_second": videos / plain_seconds, "seconds": plain_seconds, "top1": plain_top1},
        "ratio_system_over_plain": system["clips_per_second"] / (videos / plain_seconds),
        "ratio_submit_to_result_over_plain": (videos / wall) / (videos / plain_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_throughput_cpu.json")
    args = parser.parse_args()
    save(run(args), args.out)


if __name__ == "__main__":
    main()
