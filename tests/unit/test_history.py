"""A long job's history stays bounded: paged replay, running totals, thinned progress."""
import json
import math
import sqlite3
from typing import Iterator

import numpy as np
import pytest

from coordinator.efficiency import job_efficiency
from coordinator.history import HistoryTotals, StepTimes, kept_progress
from coordinator.runner import run_result
from coordinator.state import JobState
from coordinator.store import EVENTS_PAGE, MIGRATIONS, JobEvent, JobNeeds, JobSpec, JobStore
from coordinator.usage import JobUsage, Usage
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.unit.loopback import serving

SPEC = JobSpec(kind="pretrain-mae", config={"train": {"steps": 10, "global_batch": 16}}, min_workers=1,
               max_workers=2, needs=JobNeeds(world_sizes=(1, 2), decode_workers=2, decode_cpus=1.0))


def progress(step: int, seconds: float = 2.0, world_size: int = 2) -> dict:
    """Shaped like the runner's progress payload."""
    return {"step": step, "total_steps": 10, "samples": step * 16, "epoch": 0, "loss": 1.0 / step,
            "metrics": {"loss": 1.0 / step, "acc": step / 10}, "clips_per_second": 16 / seconds,
            "step_seconds": seconds, "step_samples": 16, "data_wait_fraction": 0.1 * (step % 3),
            "world_size": world_size, "decode_workers": 2, "model_flops": 1e15 * step, "step_joules": 100.0,
            "held_gpu_seconds": 0.0, "kept_gpu_seconds": 0.0, "joules": 0.0}


def workers(count: int, peak: float) -> list[dict]:
    return [{"device_name": "gpu", "peak_flops": peak, "peak": f"peak {peak:g}", "energy_sources": ["nvml"]}] * count


def write_history_with_a_failure(store: JobStore) -> str:
    """Two attempts: steps 1-6 on two workers, a failure, steps 5-10 again from the checkpoint at 4 on one."""
    job_id = store.create_job(SPEC)[0].job_id
    store.transition(job_id, JobState.STARTING)
    store.record_workers(job_id, workers(2, 100e12))
    store.transition(job_id, JobState.RUNNING)
    for step in range(1, 7):
        store.record_progress(job_id, progress(step, seconds=1.0 + step / 10))
        if step == 4:
            store.record_checkpoint(job_id, 4, "/ckpt/step-4", 2)
            store.record_validation(job_id, {"step": 4, "metrics": {"top1": 0.25}})
    store.record_skipped(job_id, "/v/bad.mp4", "corrupt", "moov atom not found")
    store.transition(job_id, JobState.RECOVERING, "failure 1")
    store.record_workers(job_id, workers(1, 50e12))
    store.transition(job_id, JobState.RUNNING)
    for step in range(5, 11):
        store.record_progress(job_id, progress(step, seconds=3.0, world_size=1))
    store.record_checkpoint(job_id, 10, "/ckpt/step-10", 1)
    store.record_validation(job_id, {"step": 10, "metrics": {"top1": 0.5}})
    return job_id


def summed_from_events(events: list[JobEvent], total_steps: int, failures: int) -> dict:
    """The job result as it was summed from every event before the totals (74cbadd's ``run_result``)."""
    progress = [e.payload for e in events if e.type == "progress"]
    samples = sum(p["step_samples"] for p in progress)
    seconds = sum(p["step_seconds"] for p in progress)
    start_step = progress[0]["step"] - 1 if progress else total_steps
    checkpoints = [e.payload["path"] for e in events if e.type == "checkpoint"]
    validations = [e.payload["metrics"] for e in events if e.type == "validation"]
    last = (progress[-1].get("metrics") or {"loss": progress[-1]["loss"]}) if progress else {"loss": float("nan")}
    return {"first_loss": progress[0]["loss"] if progress else float("nan"),
            **{f"final_{name}": value for name, value in last.items()},
            **{f"val_{name}": value for name, value in (validations[-1] if validations else {}).items()},
            "start_step": start_step, "steps": len(progress), "samples": samples, "train_seconds": seconds,
            "clips_per_second": samples / seconds if seconds else 0.0,
            "final_checkpoint": checkpoints[-1] if checkpoints else "",
            "skipped_videos": sum(e.type == "skipped_video" for e in events), "failures": failures,
            "steps_redone": len(progress) - (total_steps - start_step)}


def test_running_totals_equal_the_sums_over_every_event_though_progress_was_thinned(tmp_path):
    whole = JobStore(tmp_path / "whole.sqlite", recent_steps=10**9)  # never thins
    thinned = JobStore(tmp_path / "thinned.sqlite", recent_steps=2)
    events = list(whole.replay(write_history_with_a_failure(whole), 0))
    job_id = write_history_with_a_failure(thinned)
    assert len(list(thinned.replay(job_id, 0))) < len(events)  # the history was thinned...

    totals = thinned.totals(job_id)  # ...and the totals still count every step, the redone ones again
    assert run_result(totals, 10, 1) == summed_from_events(events, 10, 1)
    assert run_result(totals, 10, 1)["steps_redone"] == 2 and totals.steps == 12

    usage = JobUsage({"kept": Usage(8, 4000), "redone": Usage(4, 2000)}, 12)
    ours = job_efficiency(totals, usage, global_batch=16)
    steps = [e.payload for e in events if e.type == "progress"]
    seconds = np.array([p["step_seconds"] for p in steps])
    possible = sum(p["step_seconds"] * (200e12 if p["world_size"] == 2 else 50e12) for p in steps)
    assert ours.mfu == pytest.approx(sum(p["model_flops"] for p in steps) / possible)
    assert ours.peak == "peak 1e+14, peak 5e+13" and ours.energy_sources == ("nvml",)
    assert ours.data_wait_fraction == pytest.approx(np.dot(seconds, [p["data_wait_fraction"] for p in steps])
                                                    / seconds.sum())
    assert ours.clips_per_second == pytest.approx(16 * 12 / seconds.sum())
    assert ours.joules_per_clip == pytest.approx(6000 / (10 * 16))  # the furthest checkpoint's steps
    for q, figure in ((50, ours.step_seconds_p50), (95, ours.step_seconds_p95)):
        assert figure == pytest.approx(np.percentile(seconds, q), rel=0.01)
    assert ours == job_efficiency(HistoryTotals.of(events), usage, global_batch=16)  # the same whether summed here or kept


def test_step_time_percentiles_are_within_half_a_bucket_and_exact_when_every_step_took_the_same():
    rng = np.random.default_rng(0)
    seconds = rng.lognormal(mean=0.5, sigma=0.3, size=100_000)
    times = StepTimes()
    for s in seconds:
        times.add(float(s))
    for q in (1, 50, 95, 99, 100):
        assert times.percentile(q) == pytest.approx(np.percentile(seconds, q), rel=0.01)
    assert len(times.counts) < 200  # bounded by the spread of the times, not their number
    same = StepTimes()
    for _ in range(7):
        same.add(2.5)
    assert same.percentile(50) == same.percentile(95) == 2.5 and StepTimes().percentile(50) is None


def kept_count(steps: int, recent: int) -> int:
    return sum(kept_progress(step, steps, recent) for step in range(1, steps + 1))


@pytest.mark.parametrize("steps", [100_000, 1_000_000])
def test_the_thinned_series_grows_with_the_log_of_the_jobs_length(steps):
    bound = 1000 * (1 + math.log2(steps / 1000) / 2) + 1000
    assert kept_count(steps, 1000) <= bound  # 100k: 4,300 of 100,000; 1M: 5,980
    assert all(kept_progress(step, steps, 1000) for step in range(steps - 999, steps + 1))


def test_a_step_thinned_out_never_comes_back():
    for step in range(1, 3000):
        kept = [kept_progress(step, newest, 100) for newest in range(step, step + 5000, 7)]
        assert kept == sorted(kept, reverse=True)  # kept, kept, ..., dropped, dropped


def test_thinning_keeps_the_recent_steps_whole_and_every_other_event(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite", recent_steps=100)
    job_id = store.create_job(SPEC)[0].job_id
    store.record_workers(job_id, workers(2, 100e12))
    for step in range(1, 10_051):
        store.record_progress(job_id, progress(step))
        if step % 500 == 0:
            store.record_checkpoint(job_id, step, f"/ckpt/step-{step}", 2)
        if step % 1000 == 0:
            store.record_validation(job_id, {"step": step, "metrics": {"top1": 0.5}})
            store.record_skipped(job_id, f"/v/bad-{step}.mp4", "corrupt", "")
    events = list(store.replay(job_id, 0))
    kept = [e.payload["step"] for e in events if e.type == "progress"]
    others = [e.type for e in events if e.type != "progress"]
    assert others.count("checkpoint") == 20 and others.count("validation") == others.count("skipped_video") == 10
    assert others.count("workers") == 1 and others.count("state") == 1
    # Thinned last at step 10,000: the 100 steps before it whole, and every step since.
    assert kept == [s for s in range(1, 10_001) if kept_progress(s, 10_000, 100)] + list(range(10_001, 10_051))
    assert set(range(9_901, 10_051)) <= set(kept) and len(kept) <= 100 * (2 + math.log2(10_050 / 100) / 2)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # rising, with gaps
    assert store.totals(job_id).steps == 10_050


def test_a_replay_reads_a_page_at_a_time_as_it_goes(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.create_job(SPEC)[0].job_id
    for step in range(1, 3 * EVENTS_PAGE + 10):
        store.record_progress(job_id, progress(step))
    rows = store._db.execute("SELECT seq, type, payload FROM events WHERE job_id = ? ORDER BY seq",
                             (job_id,)).fetchall()
    pages = []
    store._db.set_trace_callback(lambda sql: pages.append(sql) if "ORDER BY seq LIMIT" in sql else None)
    replay = store.replay(job_id, 0)
    first = next(replay)
    assert len(pages) == 1 and first.seq == 1  # the first event after one page's read
    store.record_checkpoint(job_id, 5, "/ckpt/step-5", 1)  # appended meanwhile: it comes too
    events = [first, *replay]
    assert [(e.seq, e.type) for e in events] == [(r["seq"], r["type"]) for r in rows] + [(len(rows) + 1, "checkpoint")]
    assert [e.payload for e in events[:-1]] == [json.loads(r["payload"]) for r in rows]
    assert len(pages) == 4  # 3 full pages and a short one
    assert [e.seq for e in store.replay(job_id, len(rows) - 2)] == [len(rows) - 1, len(rows), len(rows) + 1]


def test_watch_streams_a_long_history_over_grpc_from_its_first_page(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.create_job(SPEC)[0].job_id
    for step in range(1, 6001):
        store.record_progress(job_id, progress(step))
    store.transition(job_id, JobState.CANCELLED, "by test")
    pages = []
    store._db.set_trace_callback(lambda sql: pages.append(sql) if "ORDER BY seq LIMIT" in sql else None)
    with serving(store, tmp_path) as client:
        stream = client.watch(job_id)  # the job has ended: the stream ends after its last event
        first = next(stream)
        read_by_then = len(pages)
        events = [first, *stream]
        stored = list(store.replay(job_id, 0))
        assert [e.seq for e in events] == [e.seq for e in stored] and len(stored) < 6000  # thinned, with gaps
        assert events[-1].state_changed.to_state == pb.JOB_STATE_CANCELLED  # the job's last event
        assert read_by_then <= 2 < len(pages) // 4  # streaming had begun long before the history was read
        after = stored[-3].seq
        assert [e.seq for e in client.watch(job_id, after_seq=after, follow=False)] == [e.seq for e in stored[-2:]]


class EndsDuringTheReplay(JobStore):
    """A store whose running job ends while a watch stream replays its events: before the replay reads
    them (after the stream read the job's state) or after it read them (before the stream waits for
    more): the orders a busy coordinator can give them."""

    def __init__(self, path, after_reading: bool) -> None:
        super().__init__(path)
        self.after_reading = after_reading

    def replay(self, job_id: str, after_seq: int) -> Iterator[JobEvent]:
        if not self.after_reading:
            self._end(job_id)
        yield from super().replay(job_id, after_seq)
        if self.after_reading:
            self._end(job_id)

    def _end(self, job_id: str) -> None:
        if self.get_job(job_id).state is JobState.RUNNING:
            self.transition(job_id, JobState.SUCCEEDED, "done")


@pytest.mark.parametrize("after_reading", [False, True], ids=["before-reading", "after-reading"])
@pytest.mark.parametrize("after_seq", [0, 99], ids=["from-the-start", "after-a-seq-not-yet-written"])
def test_a_watch_ends_with_the_jobs_last_event_when_the_job_ends_during_its_replay(tmp_path, after_reading,
                                                                                   after_seq):
    store = EndsDuringTheReplay(tmp_path / "jobs.sqlite", after_reading)
    job_id = store.create_job(SPEC)[0].job_id
    store.transition(job_id, JobState.STARTING)
    store.transition(job_id, JobState.RUNNING)
    # A poll longer than the call's deadline: the stream must end on what it read, not on a poll.
    with serving(store, tmp_path, watch_poll_s=60) as client:
        stream = client.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_seq=after_seq),
                                      metadata=client.metadata, timeout=20)
        states = [e.state_changed.to_state for e in stream if e.WhichOneof("body") == "state_changed"]
    # A client asking after a seq beyond the newest is woken by the job's next event, whatever its number.
    expected = [pb.JOB_STATE_QUEUED, pb.JOB_STATE_STARTING, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED]
    assert states == (expected if after_seq == 0 else expected[-1:])


def test_a_store_from_before_totals_migrates_and_sums_its_jobs_history_once(tmp_path):
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:5], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    db.execute("INSERT INTO jobs (job_id, tenant, name, kind, state, config_json, min_workers, max_workers,"
               " created_at, updated_at) VALUES ('job-0', 'local', 'n', 'pretrain-mae', 'RUNNING', '{}', 1, 1, 0, 0)")
    history = [("workers", {"workers": workers(2, 100e12)}), *[("progress", progress(s)) for s in (1, 2, 3)],
               ("checkpoint", {"step": 3, "path": "/ckpt/step-3", "world_size": 2})]
    for seq, (type_, payload) in enumerate(history, start=1):
        db.execute("INSERT INTO events VALUES ('job-0', ?, 0, ?, ?)", (seq, type_, json.dumps(payload)))
    db.close()

    store = JobStore(path)
    assert store.schema_version == len(MIGRATIONS) == 6
    assert store.totals("job-0") == HistoryTotals.of(list(store.replay("job-0", 0)))  # summed from its events
    assert store._db.execute("SELECT COUNT(*) FROM job_totals").fetchone()[0] == 0
    store.record_progress("job-0", progress(4))  # its first counted event stores the sum, and adds to it
    assert store.totals("job-0") == HistoryTotals.of(list(store.replay("job-0", 0)))
    assert store.totals("job-0").steps == 4 and store.totals("job-0").checkpointed_step == 3
    assert store._db.execute("SELECT COUNT(*) FROM job_totals").fetchone()[0] == 1
