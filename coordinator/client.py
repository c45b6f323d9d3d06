"""A small Python client for the JobService (the CLI uses it; so can notebooks and scripts)."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.internvideo.v1 import jobs_pb2 as pb
from protos.internvideo.v1 import jobs_pb2_grpc as pb_grpc

PRESETS = Path(__file__).resolve().parent.parent / "internvideo" / "configs"


def read_config(config: str) -> str:
    """A path to a YAML file, or the name of a packaged preset (``tiny-cpu``, ``vit-b``, ...)."""
    path = Path(config)
    if path.is_file():
        return path.read_text()
    preset = PRESETS / f"{config}.yaml"
    if preset.is_file():
        return preset.read_text()
    known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise FileNotFoundError(f"{config!r} is neither a file nor a preset (presets: {known})")


def read_recipe(recipe: str) -> str:
    """A recipe file, or the name of a packaged one (``internvideo/configs/recipes``), with each
    stage's ``config`` — a preset name or a YAML file — inlined: the coordinator reads no files of
    the client's."""
    path = Path(recipe)
    if not path.is_file():
        path = PRESETS / "recipes" / f"{recipe}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (PRESETS / "recipes").glob("*.yaml")))
            raise FileNotFoundError(f"{recipe!r} is neither a file nor a packaged recipe (recipes: {known})")
    loaded = yaml.safe_load(path.read_text())
    for stage in loaded.get("stages", []) if isinstance(loaded, dict) else []:
        if isinstance(stage, dict) and isinstance(stage.get("config"), str):
            stage["config"] = yaml.safe_load(read_config(stage["config"]))
    return yaml.safe_dump(loaded, sort_keys=False)


class JobClient:
    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "JobClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the coordinator reports SERVING (or raise grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        status = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        if status.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"coordinator at {self.address} is not serving ({status.status})")

    def submit(self, kind: str, config_yaml: str, overrides: list[str] = (), *, min_workers: int = 1,
               max_workers: int = 0, priority: int = 0, name: str = "", request_id: str | None = None) -> pb.Job:
        return self.stub.SubmitJob(pb.SubmitJobRequest(
            request_id=request_id or uuid.uuid4().hex, kind=kind, config_yaml=config_yaml,
            overrides=list(overrides), min_workers=min_workers, max_workers=max_workers,
            priority=priority, name=name), timeout=self.timeout_s)

    def submit_recipe(self, recipe_yaml: str, overrides: list[str] = (), *, priority: int = 0,
                      request_id: str | None = None) -> list[pb.Job]:
        """One job per stage, each after the stages it names."""
        return list(self.stub.SubmitRecipe(pb.SubmitRecipeRequest(
            request_id=request_id or uuid.uuid4().hex, recipe_yaml=recipe_yaml, overrides=list(overrides),
            priority=priority), timeout=self.timeout_s * 4).jobs)

    def get(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout_s)

    def list(self, states: list[int] = (), kinds: list[str] = (), page_size: int = 0,
             page_token: str = "") -> pb.ListJobsResponse:
        return self.stub.ListJobs(pb.ListJobsRequest(states=list(states), kinds=list(kinds), page_size=page_size,
                                                     page_token=page_token), timeout=self.timeout_s)

    def cancel(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=self.timeout_s * 2)

    def watch(self, job_id: str, after_seq: int = 0, follow: bool = True) -> Iterator[pb.JobEvent]:
        """The job's events after ``after_seq``; with ``follow``, live ones too until the job ends."""
        return self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_seq=after_seq, history_only=not follow))

    def efficiency(self, job_id: str) -> pb.JobEfficiency:
        return self.stub.GetJobEfficiency(pb.GetJobRequest(job_id=job_id), timeout=self.timeout_s)

    def cluster(self) -> pb.ClusterStatus:
        return self.stub.GetClusterStatus(pb.GetClusterStatusRequest(), timeout=self.timeout_s)
