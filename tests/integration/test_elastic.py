"""Elastic training on a simulated multi-node cluster (ray.cluster_utils): three nodes that each
declare one GPU on this CPU-only machine, a coordinator connected to it with --ray-address."""
from __future__ import annotations

import json
import signal
from collections import defaultdict

import pytest
from ray.cluster_utils import Cluster

from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.lists import read_video_list
from internvideo.data.order import GlobalBatchPlan
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import node_of_a_trainer, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    yield cluster, gpu_nodes
    cluster.shutdown()


@pytest.fixture(scope="module")
def coordinator_on_cluster(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    process, endpoints = launch_coordinator(root / "state", root / "coordinator.log", "--ray-address",
                                            cluster[0].address, "--worker-host", "127.0.0.1",
                                            "--placement-timeout", "15")
    yield endpoints["grpc"], root / "state"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=90)


def test_a_job_shrinks_when_a_node_dies_grows_when_one_joins_and_no_sample_is_lost_or_repeated(
        cluster, coordinator_on_cluster, dataset):
    ray_cluster, gpu_nodes = cluster
    address, state_dir = coordinator_on_cluster
    with JobClient(address) as client:
        assert client.cluster().trainer_resource == "GPU" and client.cluster().trainer_slots_total == 3
        # 12 clips split over 1, 2 or 3 workers in micro-batches of 2.
        job = client.submit("pretrain-mae", read_config("tiny-cpu"), [
            f"data.train_list={dataset.train_list}", "train.global_batch=12", "train.micro_batch=2",
            "train.steps=40", "train.checkpoint_every=3", "train.record_samples=true"], min_workers=1, max_workers=3)
        wait_for(lambda: client.get(job.job_id).progress.step >= 4, 300, "4 steps on 3 workers")
        assert client.get(job.job_id).world_size == 3
        ray_cluster.remove_node(node_of_a_trainer(gpu_nodes), allow_graceful=False)
        wait_for(lambda: (j := client.get(job.job_id)).world_size == 2 and j.state == pb.JOB_STATE_RUNNING, 300,
                 "the job to run on the 2 nodes left")
        ray_cluster.add_node(num_cpus=1, num_gpus=1)  # it grows back at its next checkpoint

        events = list(client.watch(job.job_id))
        job = client.get(job.job_id)
    assert pb.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.message
    states = [pb.JobState.Name(e.state_changed.to_state) for e in events if e.WhichOneof("body") == "state_changed"]
    assert states.index("JOB_STATE_RECOVERING") < states.index("JOB_STATE_RESCALING")
    sizes = [c.world_size for c in job.checkpoints]
    assert sizes[0] == 3 and 2 in sizes and sizes[-1] == 3

    # The sample log: the last execution of every step consumed exactly the plan's global batch,
    # so every epoch saw each sample exactly once, whatever the world size.
    last_run = {}
    for line in (state_dir / "jobs" / job.job_id / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        last_run[record["step"]] = record
    assert sorted(last_run) == list(range(40))
    assert {r["world_size"] for r in last_run.values()} == {3, 2}
    plan = GlobalBatchPlan(len(read_video_list(dataset.train_list)), 12, seed=0)
    per_epoch = defaultdict(list)
    for step, record in last_run.items():
        assert sorted(record["samples"]) == sorted(plan.step_samples(step).tolist())
        per_epoch[plan.epoch_of(step)] += record["samples"]
    for epoch, samples in per_epoch.items():
        assert len(samples) == len(set(samples)), f"epoch {epoch} repeats a sample"
