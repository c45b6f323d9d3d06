"""What the benchmarks share: the machine they ran on, variants measured in turns, the result file,
waiting for a job."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch

from protos.internvideo.v1 import jobs_pb2 as pb

if TYPE_CHECKING:  # the GPU machine's benchmarks import this module without the coordinator's gRPC packages
    from coordinator.client import JobClient

T = TypeVar("T")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "python": platform.python_version()}


def in_turns(runs: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Each of ``runs`` ``rounds`` times, in turns: a slow spell of the machine hits every variant."""
    results: dict[str, list[T]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    return results


def middle_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round whose ``key`` is the median: a measured round, not a mean of several."""
    return sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]


def save(result: dict[str, Any], out: Path) -> None:
    """Print the result and write it to ``out`` (JSON)."""
    print(json.dumps(result, indent=2))
    out.write_text(json.dumps(result, indent=2) + "\n")


def finished(client: JobClient, job: pb.Job) -> pb.Job:
    """``job`` once it has ended; a job that did not succeed stops the benchmark, saying why."""
    for _ in client.watch(job.job_id):
        pass
    job = client.get(job.job_id)
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"{job.name or job.kind} ended {pb.JobState.Name(job.state)}: {job.message}")
    return job
