"""A coordinator killed with SIGKILL and started again keeps every job record and its history."""
from __future__ import annotations

import pytest

from coordinator.client import JobClient
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import tiny_job, wait_for

pytestmark = pytest.mark.integration


def state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def test_killed_coordinator_restarts_with_every_record(coordinator, client, dataset):
    finished = tiny_job(client, dataset.train_list, "train.steps=2", "train.checkpoint_every=1")
    finished_events = list(client.watch(finished.job_id))
    finished = client.get(finished.job_id)
    assert state(finished) == "SUCCEEDED", finished.message
    running = tiny_job(client, dataset.train_list, "train.steps=2000", "train.checkpoint_every=2")
    wait_for(lambda: len(client.get(running.job_id).checkpoints) >= 1, 240, "a committed checkpoint")
    queued = tiny_job(client, dataset.train_list, "train.micro_batch=1", workers=16)  # never fits: stays queued
    before = {j.job_id: j for j in client.list(page_size=1000).jobs}

    coordinator.kill()
    coordinator.start()

    with JobClient(coordinator.address) as fresh:
        after = {j.job_id: j for j in fresh.list(page_size=1000).jobs}
        assert after.keys() == before.keys() == {finished.job_id, queued.job_id, running.job_id}
        assert after[finished.job_id] == before[finished.job_id]
        assert list(fresh.watch(finished.job_id)) == finished_events

        # The queued job is still queued (and then cancelled to clear the queue).
        assert state(after[queued.job_id]) == "QUEUED"
        assert state(fresh.cancel(queued.job_id)) == "CANCELLED"

        # The running job's actors died with the coordinator: it is failed, pointing at its last checkpoint.
        lost = after[running.job_id]
        assert state(lost) == "FAILED" and "coordinator restarted" in lost.message
        assert lost.checkpoints and lost.checkpoints[-1].path in lost.message
        assert len(lost.checkpoints) >= len(before[running.job_id].checkpoints)

        # And the restarted coordinator runs new work.
        again = tiny_job(fresh, dataset.train_list, "train.steps=2", f"train.resume_from={lost.checkpoints[0].path}",
                         "train.steps=4")
        list(fresh.watch(again.job_id))
        again = fresh.get(again.job_id)
        assert state(again) == "SUCCEEDED", again.message
        assert again.result.metrics["start_step"] == 2 and again.progress.step == 4
