"""``internvideo demo``: InternVideo's whole chain end to end on the embedded default.

Starts the coordinator as its own process, writes a synthetic dataset (videos of shapes that
move, grow or fade, with captions), submits the ``tiny-cpu`` recipe as one request — masked video
pretraining and video–language pretraining, each encoder's supervised post-pretraining, the
interaction of the two frozen encoders, then a multi-view recognition test and a text–video
retrieval test — streams every stage, and ends with two tables: each
stage's state, time, throughput and headline numbers (validation on the held-out split), and where
each stage's GPU-time and energy went (goodput, joules per clip, MFU); it writes each stage's
efficiency report (plots and an HTML page) beside them.
"""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from coordinator.cli import recipe_table, render_event
from coordinator.client import JobClient, read_recipe
from coordinator.launch import launch_coordinator
from coordinator.report import jobs_table, write_report
from internvideo.data.synthetic import write_synthetic_dataset
from protos.internvideo.v1 import jobs_pb2 as pb

STAGES = ("mae", "mm", "post-mae", "post-mm", "interaction")  # the training stages
EVAL_STAGES = ("eval-post-mae", "eval-mm")


def data_overrides(dataset) -> list[str]:
    """Each stage's training and held-out data (masked pretraining validates nothing; an evaluation
    has only held-out data)."""
    lists = {"mm": (dataset.train_captions, dataset.val_captions), "eval-mm": (None, dataset.val_captions),
             "eval-post-mae": (None, dataset.val_list), "mae": (dataset.train_list, None)}
    overrides = []
    for stage in (*STAGES, *EVAL_STAGES):
        train, val = lists.get(stage, (dataset.train_list, dataset.val_list))
        overrides += [f"{stage}:data.train_list={train}"] if train else []
        overrides += [f"{stage}:data.val_list={val}"] if val else []
    return overrides


def energy_note(efficiencies: list[tuple[str, pb.JobEfficiency]]) -> str:
    sources = {source for _, e in efficiencies for source in e.energy_sources}
    return " (energy estimated from declared power: nothing here measures it)" if sources == {"estimate"} else ""


def run_demo(workdir: Path, steps: int | None = None) -> int:
    """``steps``: shorten every stage (the test suite's smoke run); None: the recipe's."""
    workdir = workdir.resolve()
    log_path = workdir / "coordinator.log"
    print(f"starting the coordinator (embedded Ray + SQLite in {workdir / 'state'}; log: {log_path})", flush=True)
    server, endpoints = launch_coordinator(workdir / "state", log_path)
    print(f"coordinator serving on {endpoints['grpc']}, metrics on {endpoints['metrics']}", flush=True)
    try:
        dataset = write_synthetic_dataset(workdir / "data", num_videos=64, num_frames=32, size=64, seed=0)
        print(f"wrote a synthetic dataset of 64 captioned videos in 8 classes to {dataset.root}", flush=True)
        shorten = [f"{s}:{k}" for s in STAGES for k in (f"train.steps={steps}", "train.checkpoint_every=0")
                   ] if steps else []
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            started = time.monotonic()
            jobs = client.submit_recipe(read_recipe("tiny-cpu"), [*data_overrides(dataset), *shorten])
            print(f"submitted the tiny-cpu recipe: {len(jobs)} jobs, each starting once those it names succeed",
                  flush=True)
            for job in jobs:
                print(f"\n== {job.name} ({job.kind}, {job.job_id})", flush=True)
                for event in client.watch(job.job_id):
                    render_event(event)
            ended = [client.get(job.job_id) for job in jobs]
            print(f"\nrecipe finished in {time.monotonic() - started:.0f}s\n")
            print(recipe_table(client, ended))
            efficiencies = [(job.name, client.efficiency(job.job_id)) for job in ended]
            print(f"\nwhere the GPU-time and energy went{energy_note(efficiencies)}:\n")
            print(jobs_table(efficiencies))
            for job, (_, efficiency) in zip(ended, efficiencies):
                write_report(workdir / "reports" / job.name.split("/")[-1], job, efficiency,
                             list(client.watch(job.job_id, follow=False)))
            print(f"\nthe CLI against this coordinator: internvideo jobs --address {endpoints['grpc']} "
                  f"--token-file {endpoints['token_file']}")
            print(f"\nreports (plots and a page per stage): {workdir / 'reports'}/<stage>/index.html"
                  f"\ndashboards: deploy/grafana/ (provisioning and JSON) over Prometheus with "
                  f"deploy/prometheus/prometheus.yml, whose targets file is {workdir / 'state/prometheus/targets.json'}")
        failed = [job for job in ended if job.state != pb.JOB_STATE_SUCCEEDED]
        if failed:
            print(f"\n{len(failed)} stage(s) did not succeed; see {log_path}")
            return 1
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
