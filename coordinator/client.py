"""A small Python client for the JobService (the CLI uses it; so can notebooks and scripts)."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.internvideo.v1 import jobs_pb2 as pb
from protos.internvideo.v1 import jobs_pb2_grpc as pb_grpc

PRESETS = Path(__file__).resolve().parent.parent / "internvideo" / "configs"
# Where the embedded default's coordinator writes its admin token (``<state dir>/client-token``).
DEFAULT_TOKEN_FILE = Path("~/.internvideo/client-token")


def find_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The bearer token to send, the first given of: ``token`` ("": none), the file ``token_file``,
    ``$INTERNVIDEO_TOKEN``, the file at ``$INTERNVIDEO_TOKEN_FILE``, and the embedded coordinator's
    ``~/.internvideo/client-token`` if it exists."""
    if token is not None:
        return token or None
    if token_file:  # named: it must be there
        return Path(token_file).expanduser().read_text().strip()
    if os.environ.get("INTERNVIDEO_TOKEN"):
        return os.environ["INTERNVIDEO_TOKEN"]
    if os.environ.get("INTERNVIDEO_TOKEN_FILE"):
        return Path(os.environ["INTERNVIDEO_TOKEN_FILE"]).expanduser().read_text().strip()
    path = DEFAULT_TOKEN_FILE.expanduser()
    return path.read_text().strip() if path.is_file() else None


@dataclass(frozen=True)
class ClientTls:
    """The CA that signed the coordinator's certificate; with ``cert`` and ``key``, this client's own
    (mutual TLS). PEM files."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(), private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)


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
    """``token``: see ``find_token``; ``tls``: None for a plaintext channel (a coordinator on loopback)."""

    def __init__(self, address: str, timeout_s: float = 30.0, token: str | None = None,
                 tls: ClientTls | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.secure_channel(address, tls.credentials()) if tls else grpc.insecure_channel(address)
        self.stub = pb_grpc.JobServiceStub(self.channel)
        token = find_token(token)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

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
            priority=priority, name=name), timeout=self.timeout_s, metadata=self.metadata)

    def submit_recipe(self, recipe_yaml: str, overrides: list[str] = (), *, priority: int = 0,
                      request_id: str | None = None) -> list[pb.Job]:
        """One job per stage, each after the stages it names."""
        return list(self.stub.SubmitRecipe(pb.SubmitRecipeRequest(
            request_id=request_id or uuid.uuid4().hex, recipe_yaml=recipe_yaml, overrides=list(overrides),
            priority=priority), timeout=self.timeout_s * 4, metadata=self.metadata).jobs)

    def get(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout_s, metadata=self.metadata)

    def list(self, states: list[int] = (), kinds: list[str] = (), page_size: int = 0,
             page_token: str = "") -> pb.ListJobsResponse:
        request = pb.ListJobsRequest(states=list(states), kinds=list(kinds), page_size=page_size, page_token=page_token)
        return self.stub.ListJobs(request, timeout=self.timeout_s, metadata=self.metadata)

    def cancel(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=self.timeout_s * 2,
                                   metadata=self.metadata)

    def watch(self, job_id: str, after_seq: int = 0, follow: bool = True) -> Iterator[pb.JobEvent]:
        """The job's events after ``after_seq``; with ``follow``, live ones too until the job ends."""
        return self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_seq=after_seq, history_only=not follow),
                                   metadata=self.metadata)

    def efficiency(self, job_id: str) -> pb.JobEfficiency:
        return self.stub.GetJobEfficiency(pb.GetJobRequest(job_id=job_id), timeout=self.timeout_s,
                                          metadata=self.metadata)

    def cluster(self) -> pb.ClusterStatus:
        return self.stub.GetClusterStatus(pb.GetClusterStatusRequest(), timeout=self.timeout_s, metadata=self.metadata)
