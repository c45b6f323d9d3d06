"""End to end through the real parts: gRPC on 127.0.0.1 → coordinator → Ray actors → DeepSpeed (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.lists import read_video_list
from internvideo.data.order import GlobalBatchPlan
from protos.internvideo.v1 import jobs_pb2 as pb
from protos.internvideo.v1 import jobs_pb2_grpc as pb_grpc
from tests.integration.conftest import (
    free_port,
    held,
    max_difference,
    release,
    running_coordinator,
    tiny_job,
    wait_for,
    weights,
)
from workers.checkpoint import read_commit

pytestmark = pytest.mark.integration
TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def bodies(events, kind: str) -> list:
    return [getattr(e, kind) for e in events if e.WhichOneof("body") == kind]


@pytest.fixture(scope="module")
def six_steps(coordinator, dataset) -> tuple[pb.Job, pb.Job, list[pb.JobEvent]]:
    """A 2-worker job of 6 steps checkpointed every 3, run to its end: the job as submitted, as it ended,
    and its events."""
    with JobClient(coordinator.address, token=coordinator.token) as client:
        submitted = tiny_job(client, dataset.train_list, "train.steps=6", "train.checkpoint_every=3")
        events = list(client.watch(submitted.job_id))  # ends when the job does
        return submitted, client.get(submitted.job_id), events


def test_job_runs_to_success_streams_events_and_resumes_exactly(client, dataset, coordinator, six_steps):
    submitted, job, events = six_steps
    assert state(submitted) in ("QUEUED", "STARTING")
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"

    transitions = [pb.JobState.Name(s.to_state) for s in bodies(events, "state_changed")]
    assert transitions == ["JOB_STATE_QUEUED", "JOB_STATE_STARTING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    progress = bodies(events, "progress")
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6]
    assert all(p.total_steps == 6 and p.clips_per_second > 0 and p.loss > 0 for p in progress)
    assert [c.step for c in bodies(events, "checkpoint")] == [3, 6]
    (result,) = bodies(events, "result")
    assert result.metrics["first_loss"] == pytest.approx(progress[0].loss)
    assert result.metrics["final_loss"] == pytest.approx(progress[-1].loss)
    assert result.metrics["samples"] == 6 * 16
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.seq for e in client.watch(job.job_id, after_seq=len(events) - 2)] == [len(events) - 1, len(events)]

    assert [c.step for c in job.checkpoints] == [3, 6] and job.world_size == 0
    assert job.result.final_checkpoint == job.checkpoints[-1].path
    for ckpt in job.checkpoints:
        assert read_commit(ckpt.path)["world_size"] == 2

    # A job resumed from the step-3 checkpoint continues at step 4 with the same losses.
    resumed = tiny_job(client, dataset.train_list, "train.steps=6", "train.checkpoint_every=3",
                       f"train.resume_from={job.checkpoints[0].path}")
    resumed_events = list(client.watch(resumed.job_id))
    resumed = client.get(resumed.job_id)
    assert state(resumed) == "SUCCEEDED", resumed.message
    resumed_progress = bodies(resumed_events, "progress")
    assert [p.step for p in resumed_progress] == [4, 5, 6]
    assert [p.loss for p in resumed_progress] == [p.loss for p in progress[3:]]  # to the bit
    assert resumed.result.metrics["start_step"] == 3
    assert max_difference(weights(resumed.result.final_checkpoint), weights(job.result.final_checkpoint)) == 0

    # At another world size the checkpoint is converted to DeepSpeed's universal layout (optimizer
    # state included): one worker continues the two-worker run with the same global batch, and ends
    # where it ends up to the order in which gradients were summed.
    rescaled = tiny_job(client, dataset.train_list, "train.steps=6", "train.checkpoint_every=3",
                        f"train.resume_from={job.checkpoints[0].path}", workers=1)
    rescaled_events = list(client.watch(rescaled.job_id))
    rescaled = client.get(rescaled.job_id)
    assert state(rescaled) == "SUCCEEDED", f"{rescaled.message}\n{coordinator.log_tail()}"
    assert rescaled.checkpoints[-1].world_size == 1
    assert [p.step for p in bodies(rescaled_events, "progress")] == [4, 5, 6]
    assert read_commit(Path(job.checkpoints[0].path) / "universal")["universal"]
    final = weights(job.result.final_checkpoint)
    assert max_difference(weights(rescaled.result.final_checkpoint), final) < 1e-6
    assert max_difference(weights(job.checkpoints[0].path), final) > 1e-3  # what steps 4–6 moved them by

    listed = client.list(states=[pb.JOB_STATE_SUCCEEDED], kinds=["pretrain-mae"]).jobs
    assert {job.job_id, resumed.job_id} <= {j.job_id for j in listed}


def test_bad_requests_get_clear_errors_and_store_nothing(client, dataset):
    before = len(client.list(page_size=1000).jobs)

    def code_and_details(call) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            call()
        return err.value.code(), err.value.details()

    code, details = code_and_details(lambda: client.submit("pretrain-xyz", read_config("tiny-cpu")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("kind:")
    code, details = code_and_details(lambda: tiny_job(client, dataset.train_list, "train.lr=-0.1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("config.train.lr:")
    code, details = code_and_details(lambda: tiny_job(client, dataset.train_list, "train.warmup=3"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("config.train.warmup:")
    code, details = code_and_details(lambda: tiny_job(client, "/nonexistent/train.txt"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("config.data.train_list:")
    code, details = code_and_details(lambda: tiny_job(client, dataset.train_list, "train.resume_from=/nonexistent"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a committed checkpoint" in details
    code, details = code_and_details(lambda: client.get("job-doesnotexist"))
    assert code == grpc.StatusCode.NOT_FOUND and "job-doesnotexist" in details
    code, _ = code_and_details(lambda: client.cancel("job-doesnotexist"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_and_details(lambda: list(client.watch("job-doesnotexist")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_and_details(lambda: client.list(page_token="not-a-token"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(client.list(page_size=1000).jobs) == before


def test_a_request_that_leaves_the_worker_counts_unset_gets_their_defaults(coordinator, dataset):
    """What a third-party proto3 client sends when it omits them: zeros, meaning 1 worker."""
    with grpc.insecure_channel(coordinator.address) as channel:
        job = pb_grpc.JobServiceStub(channel).SubmitJob(pb.SubmitJobRequest(
            kind="pretrain-mae", config_yaml=read_config("tiny-cpu"),
            overrides=[f"data.train_list={dataset.train_list}", "train.steps=1"]), timeout=60,
            metadata=[("authorization", f"Bearer {coordinator.token}")])
    assert (job.min_workers, job.max_workers) == (1, 1)
    with JobClient(coordinator.address, token=coordinator.token) as client:
        list(client.watch(job.job_id))
        assert state(client.get(job.job_id)) == "SUCCEEDED"


def test_idempotent_submit_and_cancel_rules(client, dataset):
    # 16 workers never fit the 4 CPU slots: the job waits in the queue and says why.
    first = tiny_job(client, dataset.train_list, "train.micro_batch=1", workers=16, request_id="same-request")
    try:
        again = tiny_job(client, dataset.train_list, "train.micro_batch=1", workers=16, request_id="same-request")
        assert again.job_id == first.job_id
        waiting = wait_for(lambda: (j := client.get(first.job_id)).message.startswith("waiting") and j, 30,
                           "the wait reason")
        assert state(waiting) == "QUEUED" and "CPU 18" in waiting.message
    finally:
        cancelled = client.cancel(first.job_id)  # it blocks the FIFO queue for everyone else
    assert state(cancelled) == "CANCELLED"
    with pytest.raises(grpc.RpcError) as err:
        client.cancel(first.job_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already ended (CANCELLED)" in err.value.details()


def test_bad_videos_are_skipped_and_reported(client, list_with_bad_videos, coordinator):
    list_path, bad = list_with_bad_videos
    job = tiny_job(client, list_path, "train.steps=4", "train.checkpoint_every=0", "data.max_bad_fraction=0.2")
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"

    # Every bad video the seeded order reached is reported once, with its reason.
    records = read_video_list(list_path)
    plan = GlobalBatchPlan(len(records), 16, seed=0)
    reached = {records[i].path for s in range(4) for i in plan.step_samples(s)} & bad.keys()
    assert reached, "the test list must put bad videos in the first steps"
    reported = {v.path: v.reason for v in job.skipped_videos}
    assert reached <= reported.keys() <= bad.keys()
    assert all(reported[p] == bad[p] for p in reported)
    assert {e.path for e in bodies(events, "skipped_video")} == reported.keys()
    assert job.result.metrics["skipped_videos"] == len(reported)

    # With no tolerance for bad data the same job fails, naming why; the coordinator keeps serving.
    strict = tiny_job(client, list_path, "train.steps=4", "data.max_bad_fraction=0")
    list(client.watch(strict.job_id))
    strict = client.get(strict.job_id)
    assert state(strict) == "FAILED"
    assert "could not be decoded" in strict.message and "max_bad_fraction=0" in strict.message
    assert strict.skipped_videos
    assert client.cluster().trainer_slots_total == 4


def test_videos_over_the_time_limit_are_reported_as_timeout(client, dataset, coordinator):
    # No decode finishes within a microsecond: every video the job reaches is abandoned as "timeout",
    # and the job fails on the first sample whose replacements all time out too.
    job = tiny_job(client, dataset.train_list, "train.steps=2", "data.video_time_limit_s=1e-6")
    list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "FAILED", job.message
    assert "16 videos in a row could not be decoded" in job.message and "mp4 (timeout)" in job.message, job.message
    assert client.cluster().trainer_slots_free == client.cluster().trainer_slots_total


def scrape(endpoint: str) -> dict[str, list]:
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_running_job_serves_metrics_and_cancel_frees_everything(client, dataset, coordinator):
    total = client.cluster().trainer_slots_total
    job = tiny_job(client, dataset.train_list, "train.steps=2000", "train.checkpoint_every=0")
    try:
        wait_for(lambda: client.get(job.job_id).progress.step >= 3, 240, "3 steps")
        (placement,) = [p for p in client.cluster().jobs if p.job_id == job.job_id]
        assert (placement.trainer_workers, placement.decode_workers) == (2, 2)
        assert client.cluster().trainer_slots_free == total - 2 - 2  # 2 trainers + 2 decode workers
        assert len(placement.metrics_endpoints) == 4
        assert all(e.startswith("127.0.0.1:") for e in placement.metrics_endpoints)
        scraped = [scrape(e) for e in placement.metrics_endpoints]
        sizes = {s.labels["component"]: s.value for s in scrape(f"127.0.0.1:{coordinator.metrics_port}")
                 ["internvideo_job_workers"] if s.labels["job"] == job.job_id}
        assert sizes == {"trainer": 2, "decode": 2}
    finally:
        cancelled = client.cancel(job.job_id)
    assert state(cancelled) == "CANCELLED", cancelled.message

    trainers = [m for m in scraped if m.get("internvideo_train_steps")]  # every process declares all names
    decoders = [m for m in scraped if m.get("internvideo_decode_clips")]
    assert len(trainers) == 2 and len(decoders) == 2
    for metrics in trainers:
        for name in ("internvideo_train_samples", "internvideo_train_steps", "internvideo_train_data_wait_seconds",
                     "internvideo_train_model_flops"):
            (sample,) = [s for s in metrics[name] if s.name == name + "_total" and s.labels["job"] == job.job_id]
            assert sample.value > 0 and sample.labels["kind"] == "pretrain-mae"
        counts = [s for s in metrics["internvideo_train_step_seconds"] if s.name.endswith("_count")]
        assert counts and counts[0].value >= 3
    for metrics in decoders:
        clips = [s.value for s in metrics["internvideo_decode_clips"] if s.name.endswith("_total")]
        frames = [s.value for s in metrics["internvideo_decode_frames"] if s.name.endswith("_total")]
        assert clips[0] > 0 and frames[0] == 8 * clips[0]
    jobs_gauge = {s.labels["state"]: s.value for s in scrape(f"127.0.0.1:{coordinator.metrics_port}")["internvideo_jobs"]}
    assert jobs_gauge["CANCELLED"] >= 1 and set(jobs_gauge) >= {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED"}

    # Cancelling released the actors: the slots are free and the workers' endpoints are gone.
    status = client.cluster()
    assert status.trainer_slots_free == total and not status.jobs
    with pytest.raises(OSError):
        scrape(placement.metrics_endpoints[0])
    assert state(client.get(job.job_id)) == "CANCELLED"
    assert json.loads(client.get(job.job_id).config_json)["train"]["steps"] == 2000


def test_a_cancel_stops_a_streamed_chunk_after_the_step_in_flight(client, dataset):
    """The workers stream a 2,000-step chunk (no checkpoint before the end); a cancel lands after the
    step in flight on both ranks, not at the chunk's end."""
    job = tiny_job(client, dataset.train_list, "train.steps=2000", "train.checkpoint_every=0",
                   "debug.decode_delay_s=0.2")
    wait_for(lambda: client.get(job.job_id).progress.step >= 2, 240, "2 steps")
    done_before = client.get(job.job_id).progress.step
    cancelled = client.cancel(job.job_id)
    assert state(cancelled) == "CANCELLED", cancelled.message
    steps = [p.step for p in bodies(client.watch(job.job_id), "progress")]
    # At most the step in flight, and one more that may have ended between the read and the cancel.
    assert done_before <= steps[-1] <= done_before + 2 and steps == list(range(1, steps[-1] + 1))


FOUR_STEPS = ("train.steps=4", "train.checkpoint_every=2", "train.precision=fp32")


@pytest.fixture(scope="module")
def four_steps_fp32(coordinator, dataset) -> tuple[pb.Job, list[pb.JobEvent]]:
    """A 2-worker fp32 job of 4 steps checkpointed every 2, run to its end, and its events."""
    with JobClient(coordinator.address, token=coordinator.token) as client:
        job = tiny_job(client, dataset.train_list, *FOUR_STEPS)
        events = list(client.watch(job.job_id))
        job = client.get(job.job_id)
        assert state(job) == "SUCCEEDED", job.message
        return job, events


def test_two_data_parallel_workers_train_like_one(client, dataset, four_steps_fp32):
    """Same global batch, same samples: the gradient all-reduced over 2 ranks is 1 rank's mean gradient
    (its norm, step by step — a sum instead of a mean would double it, and AdamW would hide that in the
    losses), and the weights end where one rank's do."""
    job = tiny_job(client, dataset.train_list, *FOUR_STEPS, workers=1)
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED"
    one, one_weights = bodies(events, "progress"), weights(job.result.final_checkpoint)
    two_job, two_events = four_steps_fp32
    two, two_weights = bodies(two_events, "progress"), weights(two_job.result.final_checkpoint)
    assert all(p.metrics["grad_norm"] > 0 for p in one)
    assert [p.metrics["grad_norm"] for p in two] == pytest.approx([p.metrics["grad_norm"] for p in one], rel=1e-5)
    assert [p.loss for p in two] == pytest.approx([p.loss for p in one], rel=1e-5)
    assert max_difference(two_weights, one_weights) < 1e-6
    assert one[-1].loss < one[0].loss


def test_a_job_under_bf16_autocast_keeps_fp32_weights_computes_in_bf16_and_rescales_from_its_checkpoint(
        client, dataset, four_steps_fp32):
    """``train.precision=bf16-autocast``: DeepSpeed's torch autocast, the precision a plain torch loop
    trains in — fp32 weights and optimizer, bf16 matmuls. Its losses are not the fp32 job's (the matmuls
    ran in bf16) but close to them; resumed at another world size from its checkpoint (a universal
    one), it ends where it ends, up to the order in which gradients were summed — resumed compiled, too
    (``train.compile``: an eager engine's checkpoint restores into a compiled one)."""
    autocast = tiny_job(client, dataset.train_list, "train.steps=4", "train.checkpoint_every=2",
                        "train.precision=bf16-autocast")
    events = list(client.watch(autocast.job_id))
    autocast = client.get(autocast.job_id)
    assert state(autocast) == "SUCCEEDED", autocast.message
    autocast_losses = [p.loss for p in bodies(events, "progress")]
    fp32_losses = [p.loss for p in bodies(four_steps_fp32[1], "progress")]
    final = weights(autocast.result.final_checkpoint)
    assert {w.dtype for w in final.values()} == {torch.float32}
    assert autocast_losses != fp32_losses
    assert autocast_losses == pytest.approx(fp32_losses, rel=0.05)

    rescaled = tiny_job(client, dataset.train_list, "train.steps=4", "train.checkpoint_every=2",
                        "train.precision=bf16-autocast", f"train.resume_from={autocast.checkpoints[0].path}",
                        "train.compile=aot_eager", workers=1)
    rescaled_events = list(client.watch(rescaled.job_id))
    rescaled = client.get(rescaled.job_id)
    assert state(rescaled) == "SUCCEEDED", rescaled.message
    assert [p.loss for p in bodies(rescaled_events, "progress")] == pytest.approx(autocast_losses[2:], rel=1e-5)
    assert max_difference(weights(rescaled.result.final_checkpoint), final) < 1e-6
    assert max_difference(weights(autocast.checkpoints[0].path), final) > 1e-3  # what steps 3–4 moved them by


def test_a_checkpoint_of_bf16_weights_resumes_under_bf16_autocast_through_the_universal_layout(client, dataset):
    """A checkpoint of bf16 weights (``train.precision=bf16``, or ``auto`` on a GPU before it meant
    bf16-autocast) restores into an engine of fp32 weights at the same world size: DeepSpeed names a bf16
    engine's ZeRO files apart and, loading, looks only for its own kind, so the runner goes through the
    universal layout, which holds the fp32 master weights and the optimizer's state."""
    bf16 = tiny_job(client, dataset.train_list, "train.steps=4", "train.checkpoint_every=2", "train.precision=bf16")
    events = list(client.watch(bf16.job_id))
    bf16 = client.get(bf16.job_id)
    assert state(bf16) == "SUCCEEDED", bf16.message
    saved = bf16.checkpoints[0].path
    assert {w.dtype for w in weights(saved).values()} == {torch.bfloat16}
    assert read_commit(saved)["weights"] == "torch.bfloat16"

    resumed = tiny_job(client, dataset.train_list, "train.steps=4", "train.checkpoint_every=2",
                       "train.precision=bf16-autocast", f"train.resume_from={saved}")
    resumed_events = list(client.watch(resumed.job_id))
    resumed = client.get(resumed.job_id)
    assert state(resumed) == "SUCCEEDED", resumed.message
    progress = bodies(resumed_events, "progress")
    assert [p.step for p in progress] == [3, 4]
    assert read_commit(Path(saved) / "universal")["universal"]
    assert {w.dtype for w in weights(resumed.result.final_checkpoint).values()} == {torch.float32}
    assert read_commit(resumed.result.final_checkpoint)["weights"] == "torch.float32"
    # The same steps from the same state, the matmuls in bf16 either way: close, not equal.
    assert [p.loss for p in progress] == pytest.approx([p.loss for p in bodies(events, "progress")][2:], rel=0.05)


def test_repeated_sampling_reads_half_the_videos_a_step_each_twice(client, dataset, coordinator):
    """``data.repeated_sampling=2``: a step's 16 clips are 2 of each of the 8 videos the plan gives it (a
    global batch of 8 samples), every epoch still sees each video once, and the job trains."""
    job = tiny_job(client, dataset.train_list, "train.steps=6", "train.checkpoint_every=0",
                   "train.record_samples=true", "data.repeated_sampling=2")
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", job.message
    progress = bodies(events, "progress")
    assert [p.samples for p in progress] == [16 * step for step in range(1, 7)]
    plan = GlobalBatchPlan(len(read_video_list(dataset.train_list)), 8, seed=0)
    assert [p.epoch for p in progress] == [plan.epoch_of(step) for step in range(6)]
    log = [json.loads(line) for line in (coordinator.state_dir / "jobs" / job.job_id / "samples.jsonl").read_text().splitlines()]
    for record in log:
        videos = plan.step_samples(record["step"]).tolist()
        assert sorted(record["samples"]) == sorted(videos * 2)
    assert progress[-1].loss < progress[0].loss


def worker_pids(coordinator, actor_class: str) -> list[int]:
    """Pids of this coordinator's Ray actor processes of ``actor_class`` (found in its session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if cmdline.startswith(f"ray::{actor_class}") and os.getsid(int(entry.name)) == coordinator.process.pid:
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


RECOVERY_JOB = ("train.steps=30", "train.checkpoint_every=4")


@pytest.fixture(scope="module")
def uninterrupted_losses(coordinator, dataset):
    with JobClient(coordinator.address, token=coordinator.token) as client:
        job = tiny_job(client, dataset.train_list, *RECOVERY_JOB)
        events = list(client.watch(job.job_id))
        assert state(client.get(job.job_id)) == "SUCCEEDED"
    return [p.loss for p in bodies(events, "progress")]


def test_a_killed_trainer_is_replaced_and_training_continues_exactly(client, dataset, coordinator,
                                                                     uninterrupted_losses):
    total = client.cluster().trainer_slots_total
    job = tiny_job(client, dataset.train_list, *RECOVERY_JOB, "debug.hold_at_steps=[6]")
    held(client, job.job_id, 6)  # the step-4 checkpoint is committed, step 7 not begun
    pids = worker_pids(coordinator, "EncoderWorker")
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)
    release(coordinator.state_dir, job.job_id, 6)

    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    transitions = [pb.JobState.Name(s.to_state).removeprefix("JOB_STATE_") for s in bodies(events, "state_changed")]
    assert transitions == ["QUEUED", "STARTING", "RUNNING", "RECOVERING", "RUNNING", "SUCCEEDED"]
    (recovering,) = [s for s in bodies(events, "state_changed") if s.to_state == pb.JOB_STATE_RECOVERING]
    assert "train_step failed" in recovering.message and recovering.message.endswith("step-00000004")
    progress = bodies(events, "progress")
    assert [p.step for p in progress] == [*range(1, 7), 5, 6, *range(7, 31)]  # steps 5 and 6 redone from step 4
    assert job.result.metrics["failures"] == 1 and job.result.metrics["steps_redone"] == 2

    # Steps after the last checkpoint were redone from it: the final value of every step is the
    # uninterrupted run's, to the bit (same world size, same samples, same masks).
    final_loss_of_step = {p.step: p.loss for p in progress}
    assert [final_loss_of_step[s] for s in range(1, 31)] == uninterrupted_losses

    # Goodput adds up: every GPU-second the job held is kept or lost, and the first runs of steps 5
    # and 6 (their compute, less any wait for clips) are lost as redone.
    efficiency = client.efficiency(job.job_id)
    held_s = efficiency.figures["gpu_hours"] * 3600
    kept_s = efficiency.figures["goodput"] * held_s
    lost = efficiency.lost_gpu_seconds
    assert kept_s + sum(lost.values()) == pytest.approx(held_s, rel=1e-9, abs=1e-6)
    first_runs_of_5_and_6 = 2 * (progress[4].step_seconds + progress[5].step_seconds)  # 2 workers
    assert 0 < lost["redone"] <= first_runs_of_5_and_6 + 1e-3
    assert all(lost[use] > 0 for use in ("recovery", "startup", "checkpoint", "teardown", "overhead", "idle"))
    assert progress[-1].held_gpu_seconds <= held_s and progress[-1].kept_gpu_seconds <= kept_s
    # No GPU here: each worker's energy is an estimate (10 W per CPU it holds), and says so.
    assert list(efficiency.energy_sources) == ["estimate"] and efficiency.peak == "unknown"
    assert "mfu" not in efficiency.figures
    assert 5 < efficiency.figures["watts_per_device"] <= 10.0 + 1e-6
    assert job.result.metrics["goodput"] == pytest.approx(efficiency.figures["goodput"])
    assert client.cluster().trainer_slots_free == total and not client.cluster().jobs
    assert wait_for(lambda: not worker_pids(coordinator, "EncoderWorker"), 10, "the trainers to be gone")


def test_a_killed_decode_worker_is_restarted_in_place_and_no_step_is_redone(client, dataset, coordinator,
                                                                            uninterrupted_losses):
    job = tiny_job(client, dataset.train_list, *RECOVERY_JOB, "debug.hold_at_steps=[6]")
    held(client, job.job_id, 6)  # the trainers hold requests in flight at both decode workers
    (victim, survivor) = worker_pids(coordinator, "DecodeWorker")
    os.kill(victim, signal.SIGKILL)
    restarted = wait_for(lambda: set(worker_pids(coordinator, "DecodeWorker")) - {victim, survivor}, 60,
                         "Ray to restart the decode worker")
    release(coordinator.state_dir, job.job_id, 6)

    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    transitions = [pb.JobState.Name(s.to_state).removeprefix("JOB_STATE_") for s in bodies(events, "state_changed")]
    assert transitions == ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]  # the trainers never stopped
    assert job.result.metrics["failures"] == 0 and job.result.metrics["steps_redone"] == 0
    # The requests the dead worker had in flight were retried on its replacement: same clips, same losses.
    assert [p.loss for p in bodies(events, "progress")] == uninterrupted_losses
    assert restarted and wait_for(lambda: not worker_pids(coordinator, "DecodeWorker"), 10, "the pool to be gone")


def test_the_decode_pool_grows_while_trainers_wait_shrinks_for_a_queued_job_and_the_clips_stay_the_same(
        client, dataset, coordinator, uninterrupted_losses):
    # One decode worker for two trainers, each decode request slowed to 0.1 s (slow storage): the
    # trainers wait on any machine, and the pool grows into the cluster's one free CPU (4 CPUs: 2
    # trainers + 1 decode worker). Held at step 10, a second job queues behind it for want of CPUs:
    # the pool gives its extra worker back at its next decision.
    job = tiny_job(client, dataset.train_list, *RECOVERY_JOB, "data.decode_workers=1", "data.decode_workers_max=3",
                   "data.autoscale_window=2", "data.data_wait_target=0.001", "debug.decode_delay_s=0.1",
                   "debug.hold_at_steps=[10]")
    assert held(client, job.job_id, 10).progress.decode_workers == 2
    queued = tiny_job(client, dataset.train_list, "train.steps=2")
    wait_for(lambda: client.get(queued.job_id).message.startswith("waiting for resources"), 60, "the job to queue")
    release(coordinator.state_dir, job.job_id, 10)

    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    grown, shrunk = bodies(events, "decode_pool_resized")
    assert (grown.from_workers, grown.to_workers) == (1, 2) and grown.data_wait_fraction > 0.001
    assert "waited" in grown.reason
    assert (shrunk.from_workers, shrunk.to_workers) == (2, 1) and "needs the CPUs back" in shrunk.reason
    sizes = [p.decode_workers for p in bodies(events, "progress")]
    # Decided after the first window (step 2) and after the first after the hold, each resize lands one
    # step later: the workers stream their steps, and the one in flight when a decision is made finishes first.
    assert sizes == [1, 1, 1] + [2] * 9 + [1] * 18
    # Which worker decodes a clip changes nothing: the losses are those of the fixed 2-worker pool.
    assert [p.loss for p in bodies(events, "progress")] == uninterrupted_losses
    list(client.watch(queued.job_id))
    assert state(client.get(queued.job_id)) == "SUCCEEDED"
    assert wait_for(lambda: not worker_pids(coordinator, "DecodeWorker"), 10, "the pool to be gone")


def test_a_high_priority_job_preempts_a_low_one_which_resumes_exactly(client, dataset, coordinator,
                                                                     uninterrupted_losses):
    # 2 trainers + 2 decode workers: the whole cluster. No periodic checkpoints: preemption writes its own.
    low = tiny_job(client, dataset.train_list, *RECOVERY_JOB, "train.checkpoint_every=0", "debug.hold_at_steps=[6]")
    held(client, low.job_id, 6)
    high = tiny_job(client, dataset.train_list, "train.steps=3", priority=5)
    wait_for(lambda: client.get(low.job_id).state != pb.JOB_STATE_RUNNING, 60, "the low job to be preempted")
    release(coordinator.state_dir, low.job_id, 6)
    high_events = list(client.watch(high.job_id))
    assert state(client.get(high.job_id)) == "SUCCEEDED"

    events = list(client.watch(low.job_id))
    low = client.get(low.job_id)
    assert state(low) == "SUCCEEDED", f"{low.message}\n{coordinator.log_tail()}"
    changes = bodies(events, "state_changed")
    assert [pb.JobState.Name(c.to_state).removeprefix("JOB_STATE_") for c in changes] == [
        "QUEUED", "STARTING", "RUNNING", "PREEMPTED", "QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]
    preempted, requeued = changes[3], changes[4]
    assert f"preempted by {high.job_id}" in preempted.message
    # The victim checkpointed where it stopped and lost no step.
    assert [c.step for c in low.checkpoints] == [6, 30]
    assert requeued.message.endswith("step-00000006")
    assert low.result.metrics["steps_redone"] == 0 and low.result.metrics["failures"] == 0
    assert [p.step for p in bodies(events, "progress")] == list(range(1, 31))
    assert [p.loss for p in bodies(events, "progress")] == uninterrupted_losses
    # The high-priority job ran in between: it started after the victim let go, ended before it resumed.
    event_time = {e.seq: e.time.ToNanoseconds() for e in events}
    resumed_at = event_time[[e.seq for e in events if e.WhichOneof("body") == "state_changed"][5]]
    assert high_events[-1].time.ToNanoseconds() <= resumed_at


def test_a_job_whose_workers_keep_dying_fails_after_max_failures(client, dataset, coordinator):
    job = tiny_job(client, dataset.train_list, "train.steps=2000", "train.max_failures=0")
    wait_for(lambda: client.get(job.job_id).progress.step >= 2, 240, "2 steps")
    os.kill(worker_pids(coordinator, "EncoderWorker")[0], signal.SIGKILL)
    ended = wait_for(lambda: (j := client.get(job.job_id)).state in TERMINAL and j, 90, "the job to end")
    assert state(ended) == "FAILED" and "train.max_failures=0" in ended.message


def test_a_kind_from_outside_the_package_runs_through_the_coordinator(client, dataset, coordinator):
    """tests/integration/tiny_kind.py is registered only through INTERNVIDEO_TASK_MODULES (conftest)."""
    config = ("data:\n  sampling_rate: 2\n  decode_workers: 1\n"
              "train: {steps: 40, global_batch: 16, micro_batch: 4, lr: 0.5, weight_decay: 0}\n")
    job = client.submit("test-colour-probe", config, [f"data.train_list={dataset.train_list}"],
                        min_workers=2, max_workers=2)
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    progress = bodies(events, "progress")
    assert [p.step for p in progress] == list(range(1, 41))
    assert all(set(p.metrics) >= {"loss", "accuracy", "lr"} and p.loss == p.metrics["loss"] for p in progress)
    # It learns: the synthetic classes differ in colour over time (fade in / out), so some beat chance.
    assert progress[-1].loss < progress[0].loss
    assert job.result.metrics["final_accuracy"] == progress[-1].metrics["accuracy"]
    assert {j.kind for j in client.list(kinds=["test-colour-probe"]).jobs} == {"test-colour-probe"}


def test_the_efficiency_report_renders_in_a_headless_browser_with_its_plots(coordinator, six_steps, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("INTERNVIDEO_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed; `apt-get install chromium` to run this test")
    _, job, _ = six_steps
    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "coordinator.cli", "report", job.job_id,
                             "--address", coordinator.address, "--token", coordinator.token, "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "goodput" in report.stdout and "J (estimated)" in report.stdout and "unknown (peak: unknown)" in report.stdout
    assert sorted(p.name for p in out.glob("*.png")) == ["goodput.png", "loss.png", "power.png", "throughput.png"]
    page = out / "index.html"
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1800"]
    dom = subprocess.run([*browse, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="efficiency"' in dom and dom.count('src="data:image/png;base64,') == 4
    shot = tmp_path / "page.png"
    subprocess.run([*browse, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    # The plots were drawn on the page: pixels of matplotlib's first line colour (#1f77b4) are there.
    image = Image.open(shot).convert("RGB")
    line = sum(1 for r, g, b in image.getdata() if abs(r - 31) < 12 and abs(g - 119) < 12 and abs(b - 180) < 12)
    assert line > 400, f"{line} line pixels in the screenshot"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """This module's coordinator also serves Ray's dashboard."""
    with running_coordinator(tmp_path_factory.mktemp("coordinator"), ray_dashboard=True) as coord:
        yield coord


def test_the_cluster_names_rays_dashboard_and_it_answers(client):
    address = client.cluster().ray_dashboard
    assert address.startswith("127.0.0.1:"), address  # loopback only: its job API runs commands
    with urllib.request.urlopen(f"http://{address}/api/gcs_healthz", timeout=30) as response:
        assert response.status == 200
    # Its API (which wants Ray's token outside the tests: tests/conftest.py turns Ray's auth off).
    with urllib.request.urlopen(f"http://{address}/api/version", timeout=30) as response:
        assert "ray_version" in json.loads(response.read())


def test_a_dashboard_that_will_not_start_leaves_the_coordinator_serving(tmp_path, dataset):
    """Ray's dashboard process sometimes dies at start on a loaded machine; with no time to come up
    (Ray's own start-up timeout at 0) it never does, and the coordinator serves jobs without it."""
    with running_coordinator(tmp_path, ray_dashboard=True, RAY_DASHBOARD_STARTUP_TIMEOUT_S="0") as coord:
        with JobClient(coord.address, token=coord.token) as client:
            assert client.cluster().ray_dashboard == ""
            job = tiny_job(client, dataset.train_list, "train.steps=2", "train.checkpoint_every=0")
            list(client.watch(job.job_id))
            assert state(client.get(job.job_id)) == "SUCCEEDED"
        assert "Ray's dashboard did not start; serving without it" in coord.log_tail()


def test_a_dashboard_port_someone_holds_is_a_clear_error(tmp_path):
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(RuntimeError, match="exit code 2") as failed:
            launch_coordinator(tmp_path / "state", tmp_path / "coordinator.log", "--ray-dashboard-port", str(port))
    assert f"error: cannot serve Ray's dashboard: Failed to bind to 127.0.0.1:{port}" in str(failed.value)
