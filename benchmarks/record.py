"""What the benchmarks share: the machine they ran on, the result file, waiting for a job."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from coordinator.client import JobClient
from protos.internvideo.v1 import jobs_pb2 as pb


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "python": platform.python_version()}


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
