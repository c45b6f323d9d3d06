"""Elastic training on a simulated multi-node cluster (ray.cluster_utils): nodes that each declare
one GPU on this CPU-only machine, a coordinator connected to it with --ray-address."""
from __future__ import annotations

import json
import signal
import time
from collections import defaultdict

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util import placement_group_table

from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.lists import read_video_list
from internvideo.data.order import GlobalBatchPlan
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import held, max_difference, node_of_a_trainer, release, wait_for, weights

pytestmark = pytest.mark.integration
# 12 clips split over 1, 2 or 3 workers in micro-batches of 2 (accumulation 6, 3 or 2).
JOB = ("train.global_batch=12", "train.micro_batch=2", "train.steps=36", "train.checkpoint_every=3")


@pytest.fixture
def cluster():
    """A head with 2 CPUs (the decode pool) and two 1-GPU nodes; the test process joins as a driver
    so that it can look at what Ray itself holds. Each test gets its own: none depends on what
    another left behind. Ray declares a node dead after 3 failed health checks a second apart (its
    default: 5, 3 s apart): a killed raylet refuses the checks at once, so a node loss is seen in ~3 s,
    not ~15; a slow raylet still has each check's 10 s to answer."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, gpu_nodes
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def coordinator_on_cluster(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    process, endpoints = launch_coordinator(root / "state", root / "coordinator.log", "--ray-address",
                                            cluster[0].address, "--worker-host", "127.0.0.1",
                                            "--placement-timeout", "15")
    yield endpoints, root / "state"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=90)


def add_node_that_stays(cluster: Cluster, client: JobClient, slots: int, **resources) -> None:
    """Add a simulated node and wait until the coordinator counts ``slots`` trainer slots and the node's
    raylet has stayed up for 5 s. Once in a while a freshly started simulated raylet dies within seconds
    (seen twice in the suite, silently, 2 s and under 1 s after it registered: Ray's simulation, not the
    job); the node is then replaced, so that the test still exercises what it meant to."""
    for _ in range(3):
        node = cluster.add_node(**resources)
        wait_for(lambda: client.cluster().trainer_slots_total == slots, 60, "the new node to register")
        time.sleep(5)
        if all(p.process.poll() is None for p in node.all_processes["raylet"]):
            return
        print(f"a simulated node died right after joining (raylet exit code "
              f"{node.all_processes['raylet'][0].process.poll()}); adding another")
        cluster.remove_node(node, allow_graceful=False)
        wait_for(lambda: client.cluster().trainer_slots_total < slots, 120, "Ray to see that node gone")
    raise AssertionError("no simulated node stayed up")


def submit(client: JobClient, dataset, *overrides: str, min_workers: int, max_workers: int) -> pb.Job:
    return client.submit("pretrain-mae", read_config("tiny-cpu"), [f"data.train_list={dataset.train_list}", *JOB,
                                                                   *overrides], min_workers=min_workers,
                         max_workers=max_workers)


def test_a_job_rescaled_2_1_3_loses_no_sample_and_ends_where_an_uninterrupted_run_does(
        cluster, coordinator_on_cluster, dataset):
    ray_cluster, gpu_nodes = cluster
    endpoints, state_dir = coordinator_on_cluster
    with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
        assert client.cluster().trainer_resource == "GPU" and client.cluster().trainer_slots_total == 2
        # Held at step 5 on 2 workers (checkpoint 3 committed), it loses a node; held again at step 13 on
        # the 1 worker left, it gains a 2-GPU node and grows to 3 at its next checkpoint (15).
        job = submit(client, dataset, "train.record_samples=true", "debug.hold_at_steps=[5, 13]",
                     min_workers=1, max_workers=3)
        assert held(client, job.job_id, 5).world_size == 2
        ray_cluster.remove_node(node_of_a_trainer(gpu_nodes), allow_graceful=False)
        wait_for(lambda: client.cluster().trainer_slots_total == 1, 120, "Ray to see the node gone")
        release(state_dir, job.job_id, 5)
        assert held(client, job.job_id, 13).world_size == 1
        add_node_that_stays(ray_cluster, client, 3, num_cpus=2, num_gpus=2)
        release(state_dir, job.job_id, 13)
        events = list(client.watch(job.job_id))
        job = client.get(job.job_id)
        assert pb.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.message

        baseline = submit(client, dataset, min_workers=2, max_workers=2)
        list(client.watch(baseline.job_id))
        baseline = client.get(baseline.job_id)
        assert pb.JobState.Name(baseline.state) == "JOB_STATE_SUCCEEDED", baseline.message

    states = [pb.JobState.Name(e.state_changed.to_state) for e in events if e.WhichOneof("body") == "state_changed"]
    assert states.index("JOB_STATE_RECOVERING") < states.index("JOB_STATE_RESCALING")
    sizes = [c.world_size for c in job.checkpoints]
    assert sizes == [2] + [1] * 4 + [3] * 7  # checkpoints 3; 6, 9, 12, 15; 18 … 36

    # The sample log: the last execution of every step consumed exactly the plan's global batch,
    # so every epoch saw each sample exactly once, whatever the world size.
    last_run = {}
    for line in (state_dir / "jobs" / job.job_id / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        last_run[record["step"]] = record
    assert sorted(last_run) == list(range(36))
    assert {r["world_size"] for r in last_run.values()} == {1, 2, 3}
    plan = GlobalBatchPlan(len(read_video_list(dataset.train_list)), 12, seed=0)
    per_epoch = defaultdict(list)
    for step, record in last_run.items():
        assert sorted(record["samples"]) == sorted(plan.step_samples(step).tolist())
        per_epoch[plan.epoch_of(step)] += record["samples"]
    for epoch, samples in per_epoch.items():
        assert len(samples) == len(set(samples)), f"epoch {epoch} repeats a sample"

    # Same data, same optimizer state through every rescale: the weights are the uninterrupted
    # 2-worker run's, up to the order in which gradients were summed — a difference far below
    # what the last 33 steps of training moved them.
    uninterrupted = weights(baseline.result.final_checkpoint)
    difference = max_difference(weights(job.result.final_checkpoint), uninterrupted)
    trained = max_difference(weights(baseline.checkpoints[0].path), uninterrupted)
    print(f"rescaled vs uninterrupted: max |Δw| = {difference:.3g}; steps 3 → 36 moved weights by {trained:.3g}")
    assert difference < 1e-6 and trained > 1e-2

def test_below_min_workers_a_job_waits_in_the_queue_saying_why_then_resumes(cluster, coordinator_on_cluster,
                                                                           dataset):
    ray_cluster, gpu_nodes = cluster
    endpoints, state_dir = coordinator_on_cluster
    with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
        job = submit(client, dataset, "train.steps=12", "debug.hold_at_steps=[4]", min_workers=2, max_workers=2)
        held(client, job.job_id, 4)
        ray_cluster.remove_node(node_of_a_trainer(gpu_nodes), allow_graceful=False)
        wait_for(lambda: client.cluster().trainer_slots_total == 1, 120, "Ray to see the node gone")
        release(state_dir, job.job_id, 4)
        # Ray returns the released placement group's bundles a moment after the runner removes it;
        # until then the coordinator truthfully says Ray holds them. The reason settles on what is missing.
        waiting = wait_for(lambda: (j := client.get(job.job_id)).state == pb.JOB_STATE_QUEUED and
                           "GPU 2 (free 1)" in j.message and j, 120, "the job to wait in the queue saying why")
        assert waiting.message.startswith("waiting for resources: needs "), waiting.message
        add_node_that_stays(ray_cluster, client, 2, num_cpus=1, num_gpus=1)
        events = list(client.watch(job.job_id))
        job = client.get(job.job_id)
    assert pb.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.message
    states = [pb.JobState.Name(e.state_changed.to_state).removeprefix("JOB_STATE_") for e in events
              if e.WhichOneof("body") == "state_changed"]
    assert states == ["QUEUED", "STARTING", "RUNNING", "RECOVERING", "QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]
    # Restarted from the step-3 checkpoint at its only size: step 4 redone once, none lost.
    steps = [e.progress.step for e in events if e.WhichOneof("body") == "progress"]
    assert steps == [1, 2, 3, 4, 4, *range(5, 13)]
    assert job.result.metrics["failures"] == 1 and {c.world_size for c in job.checkpoints} == {2}


def test_room_ray_holds_for_someone_else_keeps_a_job_queued_saying_so(cluster, coordinator_on_cluster, dataset):
    """A GPU the coordinator cannot see is taken (another Ray user holds it): the job is not admitted
    to a placement that cannot succeed; it waits in the queue saying what Ray holds, and runs at its
    full size, with no failure counted, once the GPU is back."""
    endpoints, _ = coordinator_on_cluster
    blocker = ray.util.placement_group([{"GPU": 1}])
    assert blocker.wait(timeout_seconds=30)
    with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
        job = submit(client, dataset, "train.steps=3", min_workers=2, max_workers=2)
        waiting = wait_for(lambda: "Ray holds" in (j := client.get(job.job_id)).message and j, 60,
                           "the job to say what it waits for")
        assert waiting.state == pb.JOB_STATE_QUEUED
        assert waiting.message == ("waiting for resources: needs GPU 2 (free 1); Ray holds GPU 1 that no job of "
                                   "this coordinator does (another Ray user's, or a bundle of a node that died)")
        ray.util.remove_placement_group(blocker)
        list(client.watch(job.job_id))
        job = client.get(job.job_id)
    assert pb.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.message
    assert job.result.metrics["failures"] == 0 and job.checkpoints[-1].world_size == 2


def test_requeued_after_a_node_loss_while_ray_still_holds_a_bundle_the_job_waits_bounded_then_is_placed(
        cluster, coordinator_on_cluster, dataset):
    """A node dies under a running job, and Ray, which reschedules the placement-group bundles of a
    node that died, holds the GPU the job had on the surviving node (here: a bundle waiting for room,
    placed the moment the job lets go). The job's own bookkeeping says the GPU is free; placement
    cannot succeed. It must not wait without end: after --placement-timeout (15 s) × 2 tries it goes
    back to the queue saying what Ray holds, and once Ray lets the bundle go it is placed again within
    a tick and a placement."""
    ray_cluster, gpu_nodes = cluster
    endpoints, state_dir = coordinator_on_cluster
    with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
        job = submit(client, dataset, "train.steps=9", "debug.hold_at_steps=[4]", min_workers=1, max_workers=2)
        held(client, job.job_id, 4)
        rescheduled = ray.util.placement_group([{"GPU": 1}])  # pending: every GPU is the job's
        ray_cluster.remove_node(node_of_a_trainer(gpu_nodes), allow_graceful=False)
        lost_at = time.monotonic()
        release(state_dir, job.job_id, 4)
        assert rescheduled.wait(timeout_seconds=120)  # it took the survivor's GPU when the job released it
        waiting = wait_for(lambda: (j := client.get(job.job_id)).state == pb.JOB_STATE_QUEUED and
                           "Ray holds GPU 1" in j.message and j, 150, "the job to go back to the queue")
        requeued_after = time.monotonic() - lost_at
        assert "needs GPU 1 (free 0)" in waiting.message, waiting.message
        ray.util.remove_placement_group(rescheduled)
        freed_at = time.monotonic()
        wait_for(lambda: client.get(job.job_id).state == pb.JOB_STATE_RUNNING, 60, "the job to be placed again")
        placed_after = time.monotonic() - freed_at
        events = list(client.watch(job.job_id))
        job = client.get(job.job_id)
    assert pb.JobState.Name(job.state) == "JOB_STATE_SUCCEEDED", job.message
    messages = [e.state_changed.message for e in events if e.WhichOneof("body") == "state_changed"]
    assert any(m.startswith("not placed in 2 tries: no room for") for m in messages), messages
    print(f"requeued {requeued_after:.0f}s after the node loss; placed {placed_after:.1f}s after Ray let go")
    assert placed_after < 30
    assert job.checkpoints[-1].world_size == 1 and job.result.metrics["failures"] == 1


def test_cancel_gives_every_actor_and_placement_group_back_to_ray(cluster, coordinator_on_cluster, dataset):
    endpoints, _ = coordinator_on_cluster
    total = ray.cluster_resources()
    with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
        job = submit(client, dataset, "train.steps=1000", min_workers=1, max_workers=3)
        wait_for(lambda: client.get(job.job_id).progress.step >= 2, 300, "2 steps")
        assert ray.available_resources().get("GPU", 0) < total["GPU"]
        began = time.monotonic()
        cancelled = client.cancel(job.job_id)
        took = time.monotonic() - began
    assert pb.JobState.Name(cancelled.state) == "JOB_STATE_CANCELLED"
    # When CancelJob returns the actors are dead and the placement group is gone; Ray's resource
    # view (propagated between raylets and the GCS) follows within moments.
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
    wait_for(lambda: all(ray.available_resources().get(k, 0.0) == total[k] for k in ("CPU", "GPU")), 10,
             f"every CPU and GPU to be free (cancel took {took:.1f}s)")
