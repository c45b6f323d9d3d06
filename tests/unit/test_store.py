import sqlite3

import pytest

from coordinator.state import InvalidTransition, JobState, check_transition
from coordinator.store import MIGRATIONS, JobNeeds, JobNotFound, JobSpec, JobStore


def spec(request_id: str = "", tenant: str = "local") -> JobSpec:
    return JobSpec(kind="pretrain-mae", config={"train": {"steps": 3}}, min_workers=1, max_workers=2,
                   needs=JobNeeds(world_sizes=(1, 2), decode_workers=2, decode_cpus=1.0), request_id=request_id,
                   tenant=tenant)


def test_terminal_states_allow_no_transition():
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert state.terminal
        for target in JobState:
            with pytest.raises(InvalidTransition):
                check_transition(state, target)


def test_lifecycle_is_recorded_as_events(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job, created = store.create_job(spec())
    assert created and job.state is JobState.QUEUED
    store.transition(job.job_id, JobState.STARTING, "placing", world_size=2)
    store.transition(job.job_id, JobState.RUNNING)
    store.record_progress(job.job_id, {"step": 1, "loss": 0.5})
    store.record_checkpoint(job.job_id, 1, "/ckpt/step-1", 2)
    store.record_skipped(job.job_id, "/v/bad.mp4", "corrupt", "moov atom not found")
    store.record_skipped(job.job_id, "/v/bad.mp4", "corrupt", "moov atom not found")
    store.record_result(job.job_id, {"final_loss": 0.5})
    store.transition(job.job_id, JobState.SUCCEEDED)

    types = [(e.type, e.payload.get("to")) for e in list(store.replay(job.job_id, 0))]
    assert types == [("state", "QUEUED"), ("state", "STARTING"), ("state", "RUNNING"), ("progress", None),
                     ("checkpoint", None), ("skipped_video", None), ("result", None), ("state", "SUCCEEDED")]
    assert [e.seq for e in list(store.replay(job.job_id, 3))] == [4, 5, 6, 7, 8]
    (skipped,) = store.skipped_videos(job.job_id)
    assert (skipped.reason, skipped.count) == ("corrupt", 2)
    record = store.get_job(job.job_id)
    assert record.progress == {"step": 1, "loss": 0.5} and record.world_size == 2
    with pytest.raises(InvalidTransition):
        store.transition(job.job_id, JobState.RUNNING)


def test_invalid_transition_changes_nothing(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job, _ = store.create_job(spec())
    with pytest.raises(InvalidTransition):
        store.transition(job.job_id, JobState.SUCCEEDED)
    assert store.get_job(job.job_id).state is JobState.QUEUED
    assert len(list(store.replay(job.job_id, 0))) == 1


def test_request_id_is_idempotent(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    first, created = store.create_job(spec("req-1"))
    again, created_again = store.create_job(spec("req-1"))
    other, _ = store.create_job(spec("req-2"))
    assert created and not created_again and first.job_id == again.job_id != other.job_id


def test_unknown_job(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    with pytest.raises(JobNotFound):
        store.get_job("job-nope")
    with pytest.raises(JobNotFound):
        list(store.replay("job-nope", 0))


def test_reopen_keeps_everything_and_paging(tmp_path):
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    ids = [store.create_job(spec())[0].job_id for _ in range(5)]
    store.transition(ids[1], JobState.CANCELLED, "by test")
    store.close()

    store = JobStore(path)
    assert store.schema_version == len(MIGRATIONS)
    page, last = store.list_jobs(limit=3)
    rest, _ = store.list_jobs(after_rowid=last, limit=3)
    assert [j.job_id for j in page + rest] == ids
    cancelled, _ = store.list_jobs(states=[JobState.CANCELLED])
    assert [j.job_id for j in cancelled] == [ids[1]] and cancelled[0].message == "by test"
    assert store.count_by_state() == {JobState.QUEUED: 4, JobState.CANCELLED: 1}


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "jobs.sqlite"
    JobStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this code"):
        JobStore(path)


def test_deleted_checkpoints_are_forgotten(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job, _ = store.create_job(spec())
    for step in (1, 2, 3):
        store.record_checkpoint(job.job_id, step, f"/ckpt/step-{step}", 1)
    store.delete_checkpoint(job.job_id, 1)
    assert [c.step for c in store.checkpoints(job.job_id)] == [2, 3]


def test_a_watcher_wakes_for_its_own_jobs_next_event_only(tmp_path):
    import threading
    store = JobStore(tmp_path / "jobs.sqlite")
    watched, other = (store.create_job(spec())[0].job_id for _ in range(2))
    assert store.wait_for_events(watched, 0, 0.01)  # the submit event is already there
    assert not store.wait_for_events(watched, 1, 0.05)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_events(watched, 1, 30)))
    waiter.start()
    for step in range(3):
        store.record_progress(other, {"step": step})
    waiter.join(0.3)
    assert waiter.is_alive() and not woke  # another job's events leave it waiting
    store.record_progress(watched, {"step": 1})
    waiter.join(5)
    assert woke == [True] and not store._watchers  # and nothing is kept once nobody waits
