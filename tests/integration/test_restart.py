"""A coordinator killed with SIGKILL and started again keeps every job record and its history,
and the job that was running resumes from its last checkpoint and completes as if never stopped.
SIGTERM: it stops admitting, checkpoints and requeues running jobs, and exits within its bound."""
from __future__ import annotations

import json
import time

import pytest

from coordinator.client import JobClient
from internvideo.data.lists import read_video_list
from internvideo.data.order import GlobalBatchPlan
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import held, release, running_coordinator, tiny_job

pytestmark = pytest.mark.integration
JOB = ("train.steps=12", "train.checkpoint_every=4")
SHUTDOWN_TIMEOUT_S = 20
# After the jobs' deadline: the gRPC grace (5 s), Ray's shutdown and the process's exit.
EXIT_SLACK_S = 20


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with running_coordinator(tmp_path_factory.mktemp("restart"),
                             args=("--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S))) as coord:
        yield coord


def stop_timed(coordinator) -> float:
    began = time.monotonic()
    coordinator.stop()
    return time.monotonic() - began


def state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def progress(events) -> list[pb.Progress]:
    return [e.progress for e in events if e.WhichOneof("body") == "progress"]


def test_killed_coordinator_restarts_with_every_record_and_resumes_the_running_job(coordinator, client, dataset):
    finished = tiny_job(client, dataset.train_list, "train.steps=2", "train.checkpoint_every=1")
    finished_events = list(client.watch(finished.job_id))
    finished = client.get(finished.job_id)
    assert state(finished) == "SUCCEEDED", finished.message
    running = tiny_job(client, dataset.train_list, *JOB, "train.record_samples=true", "debug.hold_at_steps=[6]")
    held(client, running.job_id, 6)  # the step-4 checkpoint is committed, step 7 not begun
    queued = tiny_job(client, dataset.train_list, "train.micro_batch=1", workers=16)  # never fits: stays queued
    before = {j.job_id: j for j in client.list(page_size=1000).jobs}
    events_before = list(client.watch(running.job_id, follow=False))

    coordinator.kill()
    coordinator.start()
    release(coordinator.state_dir, running.job_id, 6)

    with JobClient(coordinator.address, token=coordinator.token) as fresh:
        after = {j.job_id: j for j in fresh.list(page_size=1000).jobs}
        assert after.keys() == before.keys() == {finished.job_id, queued.job_id, running.job_id}
        assert after[finished.job_id] == before[finished.job_id]
        assert list(fresh.watch(finished.job_id)) == finished_events

        # The queued job is still queued (and then cancelled to clear the queue).
        assert state(after[queued.job_id]) == "QUEUED"
        assert state(fresh.cancel(queued.job_id)) == "CANCELLED"

        # The running job's actors died with the coordinator; it went back to the queue and resumes
        # from its last committed checkpoint.
        events = list(fresh.watch(running.job_id))
        resumed = fresh.get(running.job_id)
        assert state(resumed) == "SUCCEEDED", resumed.message
        uninterrupted = tiny_job(fresh, dataset.train_list, *JOB)
        uninterrupted_events = list(fresh.watch(uninterrupted.job_id))

    # The record is whole: the history before the crash is a prefix of the history now, and goes on.
    assert events[:len(events_before)] == events_before
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    transitions = [(pb.JobState.Name(e.state_changed.to_state).removeprefix("JOB_STATE_"), e.state_changed.message)
                   for e in events if e.WhichOneof("body") == "state_changed"]
    assert [t for t, _ in transitions] == ["QUEUED", "STARTING", "RUNNING", "QUEUED", "STARTING", "RUNNING",
                                           "SUCCEEDED"]
    requeue_message = transitions[3][1]
    assert "coordinator restarted" in requeue_message and requeue_message.endswith("step-00000004")
    assert [c.step for c in resumed.checkpoints] == [4, 8, 12]

    # Nothing lost, nothing run twice: the steps after the checkpoint ran again, and the last run of
    # every step is the uninterrupted run's, to the bit, on exactly the plan's samples.
    executed = progress(events)
    assert [p.step for p in executed] == [*range(1, 7), 5, 6, *range(7, 13)]
    assert resumed.result.metrics["steps_redone"] == 2
    last = {p.step: p.loss for p in executed}
    assert [last[s] for s in range(1, 13)] == [p.loss for p in progress(uninterrupted_events)]
    plan = GlobalBatchPlan(len(read_video_list(dataset.train_list)), 16, seed=0)
    log = [json.loads(line) for line in
           (coordinator.state_dir / "jobs" / running.job_id / "samples.jsonl").read_text().splitlines()]
    last_run = {record["step"]: record["samples"] for record in log}
    assert all(sorted(last_run[s]) == sorted(plan.step_samples(s).tolist()) for s in range(12))


def test_sigterm_preempts_the_running_job_which_resumes_where_it_stood_on_restart(coordinator, client, dataset):
    job = tiny_job(client, dataset.train_list, *JOB, "debug.hold_at_steps=[6]")
    held(client, job.job_id, 6)
    took = stop_timed(coordinator)  # SIGTERM: the job checkpoints where it stands and goes back to the queue
    print(f"SIGTERM with a running job: the coordinator exited in {took:.1f}s")
    assert took < SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S
    coordinator.start()
    release(coordinator.state_dir, job.job_id, 6)

    with JobClient(coordinator.address, token=coordinator.token) as fresh:
        events = list(fresh.watch(job.job_id))
        job = fresh.get(job.job_id)
    assert state(job) == "SUCCEEDED", job.message
    transitions = [(pb.JobState.Name(e.state_changed.to_state).removeprefix("JOB_STATE_"), e.state_changed.message)
                   for e in events if e.WhichOneof("body") == "state_changed"]
    assert [t for t, _ in transitions] == ["QUEUED", "STARTING", "RUNNING", "PREEMPTED", "QUEUED", "STARTING",
                                           "RUNNING", "SUCCEEDED"]
    assert transitions[3][1] == "the coordinator shut down"
    assert transitions[4][1].endswith("step-00000006")
    # It lost no step: no step ran twice, and the preemption's own checkpoint sits between the periodic ones.
    assert [p.step for p in progress(events)] == list(range(1, 13))
    assert job.result.metrics["steps_redone"] == 0 and job.result.metrics["failures"] == 0
    assert [c.step for c in job.checkpoints] == [4, 6, 8, 12]


def test_sigterm_exits_within_its_bound_even_when_a_job_cannot_checkpoint_in_time(coordinator, client, dataset):
    """A step that outlasts the shutdown deadline (slow storage: every decode takes 28 s; the trainers ask
    for their first clips in their first step, after the job is RUNNING, and the deadline ends 20 s after
    the SIGTERM, which follows the RUNNING the client sees within a second or two) does not hold the
    coordinator: it exits on time, and the next start requeues the job, which then completes. One
    micro-batch a rank: the two decode workers answer the step's requests at once, so the step after the
    restart waits 28 s once, not twice."""
    job = tiny_job(client, dataset.train_list, "train.steps=1", "train.micro_batch=8",
                   f"debug.decode_delay_s={SHUTDOWN_TIMEOUT_S + 8}")
    with JobClient(coordinator.address, token=coordinator.token) as watcher:
        for event in watcher.watch(job.job_id):
            if event.WhichOneof("body") == "state_changed" and event.state_changed.to_state == pb.JOB_STATE_RUNNING:
                break
    took = stop_timed(coordinator)
    print(f"SIGTERM mid-step: the coordinator exited in {took:.1f}s")
    assert took < SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S
    coordinator.start()
    with JobClient(coordinator.address, token=coordinator.token) as fresh:
        events = list(fresh.watch(job.job_id))
        job = fresh.get(job.job_id)
    assert state(job) == "SUCCEEDED", job.message
    requeued = [e.state_changed.message for e in events if e.WhichOneof("body") == "state_changed"
                and e.state_changed.to_state == pb.JOB_STATE_QUEUED][1:]
    assert requeued and requeued[0].startswith("the coordinator restarted while the job was"), requeued
