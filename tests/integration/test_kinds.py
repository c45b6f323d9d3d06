"""Every training kind through the real coordinator (tiny configs), and the guarantee each keeps: a
run rescaled mid-way ends where the uninterrupted run ends, and a killed trainer resumes exactly."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from coordinator.client import JobClient, read_config
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import held, max_difference, release, wait_for, weights
from tests.integration.test_jobs import bodies, state, worker_pids

pytestmark = pytest.mark.integration
MM = ("train.steps=8", "train.checkpoint_every=4")


def mm_job(client: JobClient, dataset, *overrides: str, workers: int = 2) -> pb.Job:
    return client.submit("pretrain-mm", read_config("tiny-cpu-mm"),
                         [f"data.train_list={dataset.train_captions}", *MM, *overrides],
                         min_workers=workers, max_workers=workers)


def finished(client: JobClient, job: pb.Job, coordinator) -> tuple[pb.Job, list]:
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    return job, events


def without_key_biases(state: dict) -> dict:
    """The weights that decide the function: the key third of each attention's ``in_proj_bias`` adds
    the same q·b_k to every score of a row, which softmax ignores. Its gradient is zero but for
    float noise, which AdamW divides by that noise's own magnitude: it walks by lr-sized steps that
    differ from run to run without changing any output."""
    out = {}
    for name, value in state.items():
        if name.endswith("in_proj_bias"):
            third = value.shape[0] // 3
            value = torch.cat([value[:third], value[2 * third:]])
        out[name] = value
    return out


@pytest.fixture(scope="module")
def uninterrupted_mm(coordinator, dataset):
    """Two 2-worker runs, 8 steps: global negatives (GradCache) and micro-batch negatives."""
    with JobClient(coordinator.address) as client:
        return {negatives: finished(client, mm_job(client, dataset, f"model.negatives={negatives}"), coordinator)
                for negatives in ("global", "micro")}


def test_pretrain_mm_trains_and_reports_its_losses(uninterrupted_mm):
    job, events = uninterrupted_mm["global"]
    progress = bodies(events, "progress")
    assert [p.step for p in progress] == list(range(1, 9))
    for p in progress:
        assert set(p.metrics) >= {"loss", "contrastive", "caption", "temperature", "lr", "grad_norm"}
        assert p.loss == pytest.approx(p.metrics["contrastive"] + 0.5 * p.metrics["caption"], rel=1e-6)
    assert progress[0].metrics["temperature"] == pytest.approx(1 / 0.07, rel=1e-6)  # CLIP's initial scale
    assert progress[-1].metrics["contrastive"] < progress[0].metrics["contrastive"]
    assert [c.step for c in job.checkpoints] == [4, 8]


def test_pretrain_mm_rescaled_2_to_1_ends_where_the_uninterrupted_run_does(client, dataset, coordinator,
                                                                           uninterrupted_mm):
    """Global negatives: the step's loss is over the whole global batch at 2 workers × 2 micro-batches and
    at 1 worker × 4. Micro-batch negatives (the control) change with the split, and the runs part."""
    differences = {}
    for negatives, (job, _) in uninterrupted_mm.items():
        rescaled = mm_job(client, dataset, f"model.negatives={negatives}",
                          f"train.resume_from={job.checkpoints[0].path}", workers=1)
        rescaled, events = finished(client, rescaled, coordinator)
        assert [p.step for p in bodies(events, "progress")] == [5, 6, 7, 8]
        differences[negatives] = max_difference(without_key_biases(weights(rescaled.result.final_checkpoint)),
                                                without_key_biases(weights(job.result.final_checkpoint)))
    print(f"rescaled 2 → 1 vs uninterrupted, max |Δw|: {differences}")
    assert differences["global"] < 1e-6
    assert differences["micro"] > 100 * max(differences["global"], 1e-8)


def test_a_killed_pretrain_mm_trainer_resumes_exactly(client, dataset, coordinator, uninterrupted_mm):
    job = mm_job(client, dataset, "debug.hold_at_steps=[6]")
    held(client, job.job_id, 6)
    os.kill(worker_pids(coordinator, "EncoderWorker")[0], signal.SIGKILL)
    release(coordinator.state_dir, job.job_id, 6)
    job, events = finished(client, job, coordinator)
    progress = bodies(events, "progress")
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    assert job.result.metrics["failures"] == 1
    last = {p.step: dict(p.metrics) for p in progress}
    expected = bodies(uninterrupted_mm["global"][1], "progress")
    assert [{k: v for k, v in last[s].items()} for s in range(1, 9)] == [dict(p.metrics) for p in expected]
    assert max_difference(weights(job.result.final_checkpoint),
                          weights(uninterrupted_mm["global"][0].result.final_checkpoint)) == 0
    wait_for(lambda: not worker_pids(coordinator, "EncoderWorker"), 10, "the trainers to be gone")
