"""The `internvideo` command line against a real coordinator, as a user types it."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from coordinator.client import JobClient
from internvideo.data.formats import read_activitynet
from tests.integration.conftest import REPO, held

pytestmark = pytest.mark.integration


def cli(coordinator, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args, "--address", coordinator.address,
                           "--token-file", str(coordinator.state_dir / "client-token")],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_submit_watch_status_jobs_cluster(coordinator, dataset, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text((REPO / "internvideo/configs/tiny-cpu.yaml").read_text())
    run = cli(coordinator, "submit", "pretrain-mae", "--config", str(config), "--set",
              f"data.train_list={dataset.train_list}", "--set", "train.steps=3", "--set", "train.checkpoint_every=1",
              "--set", "train.keep_checkpoints=2",
              "--min-workers", "1", "--name", "from-the-cli", "--watch")
    assert run.returncode == 0, run.stderr + run.stdout
    job_id = run.stdout.splitlines()[0]
    assert "step 3/3" in run.stdout and "state → SUCCEEDED" in run.stdout

    status = json.loads(cli(coordinator, "status", job_id).stdout)
    assert status["state"] == "SUCCEEDED" and status["name"] == "from-the-cli"
    assert status["progress"]["step"] == 3 and status["final_checkpoint"].endswith("step-00000003")
    # Only the newest two checkpoints are kept, on disk and in the record.
    assert [Path(c).name for c in status["checkpoints"]] == ["step-00000002", "step-00000003"]
    on_disk = Path(status["final_checkpoint"]).parent.glob("step-*")  # DeepSpeed adds its helper scripts there
    assert sorted(p.name for p in on_disk) == ["step-00000002", "step-00000003"]

    listing = cli(coordinator, "jobs", "--state", "succeeded").stdout
    assert job_id in listing
    cluster = json.loads(cli(coordinator, "cluster").stdout)
    assert cluster["trainerResource"] == "CPU" and cluster["trainerSlotsTotal"] == 4


def test_request_id_priority_watch_and_cancel(coordinator, dataset):
    submit = ("submit", "pretrain-mae", "--config", "tiny-cpu", "--set", f"data.train_list={dataset.train_list}",
              "--set", "train.steps=50", "--set", "debug.hold_at_steps=[2]", "--min-workers", "1",
              "--priority", "3", "--request-id", "cli-request-1")
    first, again = cli(coordinator, *submit), cli(coordinator, *submit)
    assert first.returncode == again.returncode == 0, first.stderr
    job_id = first.stdout.strip()
    assert again.stdout.strip() == job_id  # the same request makes no second job
    status = json.loads(cli(coordinator, "status", job_id).stdout)
    assert (status["priority"], status["request_id"]) == (3, "cli-request-1")
    with JobClient(coordinator.address, token=coordinator.token) as client:
        held(client, job_id, 2)

    cancel = cli(coordinator, "cancel", job_id)
    assert cancel.returncode == 0 and cancel.stdout.startswith(f"job {job_id}: CANCELLED"), cancel.stdout
    watch = cli(coordinator, "watch", job_id)  # replays the history of an ended job, then ends
    assert watch.returncode == 1, watch.stdout  # the job did not succeed
    lines = watch.stdout.splitlines()
    steps = [line.split(" loss")[0].rsplit("] ", 1)[1] for line in lines if "] step " in line]
    assert steps == ["step 1/50", "step 2/50"]  # held after step 2, cancelled there
    assert lines[-2] == "state → CANCELLED: cancelled by request" and lines[-1].startswith(f"job {job_id}: CANCELLED")


def test_cli_errors_are_one_clear_line(coordinator):
    run = cli(coordinator, "submit", "pretrain-mae", "--config", "tiny-cpu", "--set", "train.lr=-1")
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: INVALID_ARGUMENT: config.data.train_list")
    run = cli(coordinator, "submit", "pretrain-mae", "--config", "no-such-preset")
    assert run.returncode == 2 and "neither a file nor a preset" in run.stderr
    run = cli(coordinator, "status", "job-unknown")
    assert run.returncode == 2 and "NOT_FOUND" in run.stderr


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class _Bearer(grpc.StreamStreamClientInterceptor):
    """What `grpcurl -H 'authorization: Bearer …'` does: the token on every call of a channel."""

    def __init__(self, token: str) -> None:
        self.metadata = [("authorization", f"Bearer {token}")]

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(_CallDetails(details.method, details.timeout, self.metadata, details.credentials,
                                         details.wait_for_ready, details.compression), requests)


def test_reflection_lists_the_services_to_a_client_with_a_token(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        services = ProtoReflectionDescriptorDatabase(
            grpc.intercept_channel(channel, _Bearer(coordinator.token))).get_services()
    assert {"internvideo.v1.JobService", "grpc.health.v1.Health"} <= set(services)


def test_data_synth_writes_a_trainable_dataset(tmp_path):
    run = subprocess.run([sys.executable, "-m", "coordinator.cli", "data", "synth", str(tmp_path / "synth"),
                          "--num-videos", "16", "--num-frames", "16", "--size", "32", "--seed", "3",
                          "--untrimmed", "3"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    train = (tmp_path / "synth" / "train.txt").read_text().split("\n")
    val = (tmp_path / "synth" / "val.txt").read_text().split("\n")
    entries = [line for line in train + val if line]
    assert len(entries) == 16
    assert all((tmp_path / "synth" / line.split()[0]).stat().st_size > 0 for line in entries)
    assert (tmp_path / "synth" / "captions.csv").read_text().startswith("video,caption")
    untrimmed = read_activitynet(tmp_path / "synth" / "untrimmed" / "activitynet.json")
    assert len(untrimmed) == 3 and all(Path(v.path).stat().st_size > 0 and v.segments for v in untrimmed)
