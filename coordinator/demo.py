"""``internvideo demo``: a real job end to end on the embedded default.

Starts the coordinator as its own process, writes a synthetic dataset, submits a tiny
``pretrain-mae`` job with 2 trainers (data parallel through DeepSpeed) and 2 decode
workers, streams its progress, and prints the outcome.
"""
from __future__ import annotations

import signal
import statistics
import subprocess
import time
from pathlib import Path

from coordinator.cli import _state_name, render_event
from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.synthetic import write_synthetic_dataset


def run_demo(workdir: Path, steps: int | None = None) -> int:
    """``steps``: shorten the job (the test suite's smoke run); None: the preset's."""
    workdir = workdir.resolve()
    log_path = workdir / "coordinator.log"
    print(f"starting the coordinator (embedded Ray + SQLite in {workdir / 'state'}; log: {log_path})", flush=True)
    server, endpoints = launch_coordinator(workdir / "state", log_path)
    address = endpoints["grpc"]
    print(f"coordinator serving on {address}, metrics on {endpoints['metrics']}", flush=True)
    try:
        dataset = write_synthetic_dataset(workdir / "data", num_videos=64, num_frames=32, size=64, seed=0)
        print(f"wrote a synthetic dataset of 64 videos to {dataset.root}", flush=True)
        with JobClient(address) as client:
            started = time.monotonic()
            job = client.submit("pretrain-mae", read_config("tiny-cpu"),
                                [f"data.train_list={dataset.train_list}",
                                 *([f"train.steps={steps}"] if steps else [])], min_workers=2, max_workers=2,
                                name="demo-tiny-mae")
            print(f"submitted {job.job_id}: pretrain-mae, tiny-cpu preset, 2 trainers + 2 decode workers", flush=True)
            losses = []
            for event in client.watch(job.job_id):
                render_event(event)
                if event.WhichOneof("body") == "progress":
                    losses.append(event.progress.loss)
            job = client.get(job.job_id)
        metrics = job.result.metrics
        print(f"\njob {job.job_id}: {_state_name(job.state)} {job.message}")
        if _state_name(job.state) != "SUCCEEDED":
            print(f"see {log_path}")
            return 1
        window = min(10, len(losses))
        print(f"  loss: first step {metrics['first_loss']:.4f} → last step {metrics['final_loss']:.4f}; "
              f"mean of the first {window} steps {statistics.fmean(losses[:window]):.4f} → "
              f"of the last {window} {statistics.fmean(losses[-window:]):.4f}")
        print(f"  throughput: {metrics['clips_per_second']:.1f} clips/s over {int(metrics['steps'])} steps "
              f"({int(metrics['samples'])} clips, {metrics['train_seconds']:.0f}s training, "
              f"{time.monotonic() - started:.0f}s from submit)")
        print(f"  checkpoint: {job.result.final_checkpoint}")
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
