"""Admission decisions one tick at a time, with fake runners (no Ray)."""
from __future__ import annotations

import pytest

from coordinator.client import read_config
from coordinator.runner import RunnerSettings, resource_demand
from coordinator.scheduler import Scheduler
from coordinator.state import InvalidTransition, JobState
from coordinator.store import JobStore
from coordinator.submission import SubmissionContext, validate_submission
from coordinator.tenancy import Quota
from internvideo.tasks.common import SharedConfig


class FakeRunner:
    STOPPED = "stopped by its runner"  # not the scheduler's words: tells who wrote the record

    def __init__(self, store, job, world_size, settings, on_exit, fit_world_size, grow_target, decode_limit):
        self.store, self.job, self.world_size, self.on_exit = store, job, world_size, on_exit
        self.job_id = job.job_id
        self.config = SharedConfig.model_validate(job.config)
        self.demand = resource_demand(job.needs, world_size, settings.trainer_bundle)
        self.metrics_endpoints, self.decode_workers = {}, self.config.data.decode_workers
        self.started = self.cancelled = False
        self.stops_when_cancelled = True  # False: a runner still stopping when the scheduler stops waiting
        self.calls: list[tuple] = []  # cancel and join, in the order the scheduler made them
        self.preempt_reason = ""

    @property
    def preempting(self):
        return bool(self.preempt_reason)

    def start(self):
        self.started = True

    def cancel(self):
        self.calls.append(("cancel",))
        self.cancelled = True

    def preempt(self, reason):
        self.preempt_reason = reason

    def join(self, timeout=None):
        self.calls.append(("join", timeout))
        if self.cancelled and self.stops_when_cancelled:  # what a real runner does once it stopped
            self.store.transition(self.job_id, JobState.CANCELLED, self.STOPPED, world_size=0)
            self.on_exit(self)

    def is_alive(self):
        return self.started and self.store.get_job(self.job_id).state.active

    def release_preempted(self):
        """What a real runner does once preempted: checkpoint, release, requeue."""
        self.store.transition(self.job_id, JobState.PREEMPTED, self.preempt_reason, world_size=0)
        self.on_exit(self)
        self.store.transition(self.job_id, JobState.QUEUED, "requeued", world_size=0)

    def finish(self):
        self.store.transition(self.job_id, JobState.RUNNING)
        self.store.transition(self.job_id, JobState.SUCCEEDED, world_size=0)
        self.on_exit(self)


@pytest.fixture
def cluster():
    return {"CPU": 8.0}


@pytest.fixture
def quotas():
    return {}  # tenant → Quota; a test sets them


@pytest.fixture
def scheduler(tmp_path, cluster, quotas):
    store = JobStore(tmp_path / "jobs.sqlite")
    settings = RunnerSettings(state_dir=tmp_path, trainer_bundle={"CPU": 1.0})
    return Scheduler(store, settings, lambda: cluster, runner_factory=FakeRunner,
                     quota=lambda tenant: quotas.get(tenant, Quota()))


def submit(scheduler, min_workers, max_workers, *overrides, priority=0, tenant="local"):
    train_list = scheduler.settings.state_dir / "train.txt"
    train_list.write_text("a.mp4 0\n" * 16)
    spec = validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                               overrides=[f"data.train_list={train_list}", *overrides],
                               min_workers=min_workers, max_workers=max_workers, priority=priority,
                               context=SubmissionContext(tenant=tenant))
    return scheduler.store.create_job(spec)[0].job_id


def test_takes_the_largest_world_size_that_fits_and_splits_the_batch(scheduler):
    job = submit(scheduler, 1, 8)  # 8 CPUs − 2 decode workers = 6 trainers, but 16 / (4·w) needs w ∈ {1, 2, 4}
    scheduler.tick()
    runner = scheduler.runners[job]
    assert runner.started and runner.world_size == 4
    assert scheduler.store.get_job(job).state is JobState.STARTING
    assert scheduler.free_resources() == {"CPU": 8.0 - 4 - 2}


def test_a_job_stored_before_needs_were_gets_them_derived_once(scheduler):
    job = submit(scheduler, 1, 8)
    scheduler.store._db.execute("UPDATE jobs SET needs_json = '{}' WHERE job_id = ?", (job,))  # an older row
    assert scheduler.store.get_job(job).needs is None
    scheduler.tick()
    stored = scheduler.store.get_job(job).needs
    assert stored is not None and stored.world_sizes == (1, 2, 4) and stored.decode_workers == 2
    assert scheduler.runners[job].world_size == 4 and scheduler.runners[job].job.needs == stored


def test_strict_fifo_the_head_blocks_the_queue_and_says_why(scheduler):
    big = submit(scheduler, 8, 8, "train.micro_batch=2")
    small = submit(scheduler, 1, 1)
    scheduler.tick()
    assert not scheduler.runners
    assert scheduler.store.get_job(big).message == "waiting for resources: needs CPU 10 (free 8)"
    assert scheduler.store.get_job(small).state is JobState.QUEUED

    scheduler.cancel(big)
    scheduler.tick()
    assert list(scheduler.runners) == [small]


def test_finished_jobs_free_their_resources_for_the_next(scheduler):
    first, second = submit(scheduler, 4, 4), submit(scheduler, 4, 4)
    scheduler.tick()
    assert list(scheduler.runners) == [first]
    scheduler.runners[first].finish()
    scheduler.tick()
    assert list(scheduler.runners) == [second]
    assert scheduler.store.get_job(first).state is JobState.SUCCEEDED


def test_a_queued_job_is_cancelled_by_the_scheduler_and_an_ended_job_cannot_be(scheduler):
    queued = submit(scheduler, 1, 1)
    record = scheduler.cancel(queued)
    assert record.state is JobState.CANCELLED and record.message == "cancelled by request"
    scheduler.tick()
    assert not scheduler.runners  # never started: no runner was needed to cancel it, nor made later
    with pytest.raises(InvalidTransition, match="already ended"):
        scheduler.cancel(queued)

    finished = submit(scheduler, 1, 1)
    scheduler.tick()
    runner = scheduler.runners[finished]
    runner.finish()
    with pytest.raises(InvalidTransition, match="already ended"):
        scheduler.cancel(finished)
    assert runner.calls == [] and scheduler.store.get_job(finished).state is JobState.SUCCEEDED


def test_cancelling_a_running_job_asks_its_runner_waits_for_it_and_returns_what_it_left(scheduler):
    job = submit(scheduler, 1, 1)
    scheduler.tick()
    runner = scheduler.runners[job]
    record = scheduler.cancel(job, wait_s=7.5)
    assert runner.calls == [("cancel",), ("join", 7.5)]  # told to stop, then waited for, within wait_s
    assert record.state is JobState.CANCELLED and record.message == FakeRunner.STOPPED  # the runner's record
    assert record == scheduler.store.get_job(job) and not scheduler.runners

    # A runner still stopping when the wait ends: the job is reported as it is, not as cancelled.
    slow = submit(scheduler, 1, 1)
    scheduler.tick()
    runner = scheduler.runners[slow]
    runner.stops_when_cancelled = False
    record = scheduler.cancel(slow, wait_s=0.5)
    assert runner.calls == [("cancel",), ("join", 0.5)]
    assert record.state is JobState.STARTING and record == scheduler.store.get_job(slow)
    assert list(scheduler.runners) == [slow]  # it still holds its resources until it exits


def test_jobs_left_active_by_a_dead_coordinator_are_requeued_to_resume_from_their_last_checkpoint(scheduler):
    running, preempted = submit(scheduler, 1, 1), submit(scheduler, 1, 1)
    for job in (running, preempted):
        scheduler.store.transition(job, JobState.STARTING)
        scheduler.store.transition(job, JobState.RUNNING)
    scheduler.store.transition(preempted, JobState.PREEMPTED)
    scheduler.store.record_checkpoint(running, 10, "/ckpt/step-00000010", 1)
    scheduler._requeue_orphans()
    record = scheduler.store.get_job(running)
    assert record.state is JobState.QUEUED and record.message.endswith("resumes from /ckpt/step-00000010")
    assert scheduler.store.get_job(preempted).message.endswith("resumes from the start")
    assert [j.job_id for j in scheduler.store.queue()] == [running, preempted]


def test_priority_orders_the_queue_and_fifo_holds_within_a_priority(scheduler, cluster):
    cluster["CPU"] = 0.0
    low, high, high_later = submit(scheduler, 1, 1), submit(scheduler, 1, 1, priority=5), \
        submit(scheduler, 1, 1, priority=5)
    assert [j.job_id for j in scheduler.store.queue()] == [high, high_later, low]


def test_a_job_that_cannot_fit_preempts_the_fewest_lowest_priority_jobs(scheduler):
    low = submit(scheduler, 2, 2, priority=0)  # 2 trainers + 2 decode CPUs each
    mid = submit(scheduler, 2, 2, priority=1)
    scheduler.tick()
    assert set(scheduler.runners) == {low, mid} and scheduler.free_resources() == {"CPU": 0.0}

    same = submit(scheduler, 2, 2, priority=0)  # equal (or lower) priority never preempts
    scheduler.tick()
    assert not any(r.preempting for r in scheduler.runners.values())
    scheduler.cancel(same)

    high = submit(scheduler, 2, 2, priority=9)
    scheduler.tick()
    victims = [r.job_id for r in scheduler.runners.values() if r.preempting]
    assert victims == [low]  # one job's room is enough; the lowest priority goes
    assert f"preempted by {high}" in scheduler.runners[low].preempt_reason
    scheduler.tick()  # while the victim releases, nobody else is preempted
    assert [r.job_id for r in scheduler.runners.values() if r.preempting] == [low]

    scheduler.runners[low].release_preempted()
    scheduler.tick()
    assert set(scheduler.runners) == {mid, high}
    assert scheduler.store.get_job(low).state is JobState.QUEUED  # waits for room, first of its priority
    scheduler.runners[high].finish()
    scheduler.tick()
    assert set(scheduler.runners) == {mid, low}


def test_no_preemption_when_even_every_lower_priority_job_would_not_make_room(scheduler):
    low = submit(scheduler, 2, 2)
    scheduler.tick()
    huge = submit(scheduler, 8, 8, "train.micro_batch=2", priority=9)  # needs 10 CPUs of 8
    scheduler.tick()
    assert not scheduler.runners[low].preempting
    assert scheduler.store.get_job(huge).message == "waiting for resources: needs CPU 10 (free 4)"


def test_after_a_failure_a_job_refits_to_what_the_cluster_has_left(scheduler, cluster):
    job = submit(scheduler, 1, 4)
    scheduler.tick()
    runner = scheduler.runners[job]
    assert runner.world_size == 4 and scheduler.fit_world_size(runner) == 4
    cluster["CPU"] = 5.0  # a node with 3 CPUs left: 5 − 2 decode workers = 3 trainers → 2 (16 / (4·w))
    assert scheduler.fit_world_size(runner) == 2
    cluster["CPU"] = 2.0
    assert scheduler.fit_world_size(runner) is None


def test_a_job_grows_into_free_room_only_while_nobody_queues(scheduler, cluster):
    job = submit(scheduler, 1, 4)
    cluster["CPU"] = 4.0  # 4 − 2 decode workers: room for 2 trainers
    scheduler.tick()
    runner = scheduler.runners[job]
    assert runner.world_size == 2 and scheduler.grow_target(runner) == 2
    cluster["CPU"] = 8.0  # a node joined
    assert scheduler.grow_target(runner) == 4
    waiting = submit(scheduler, 8, 8, "train.micro_batch=2")  # cannot start, but it is first in line
    scheduler.tick()
    assert scheduler.store.get_job(waiting).state is JobState.QUEUED
    assert scheduler.grow_target(runner) == 2


def test_a_decode_pool_grows_into_free_cpus_only_while_nobody_waits(scheduler):
    job = submit(scheduler, 2, 2)  # 2 trainers + 2 decode workers of 8 CPUs
    scheduler.tick()
    runner = scheduler.runners[job]
    assert scheduler.decode_limit(runner) == 2 + 4  # its pool plus every free CPU
    waiting = submit(scheduler, 8, 8, "train.micro_batch=2")
    scheduler.tick()
    assert scheduler.store.get_job(waiting).state is JobState.QUEUED
    assert scheduler.decode_limit(runner) == 2  # back to its starting size while a job waits


def test_a_job_whose_runner_cannot_be_made_fails_with_the_reason_and_the_queue_goes_on(scheduler):
    broken, fine = submit(scheduler, 1, 1), submit(scheduler, 1, 1)

    def factory(store, job, *args, **kwargs):
        if job.job_id == broken:
            raise ValueError("its config no longer reads")
        return FakeRunner(store, job, *args, **kwargs)

    scheduler.runner_factory = factory
    scheduler.tick()
    failed = scheduler.store.get_job(broken)
    assert failed.state is JobState.FAILED
    assert failed.message == "cannot be started: ValueError: its config no longer reads"
    assert scheduler.store.get_job(fine).state is JobState.STARTING and scheduler.runners[fine].started


def test_a_runner_that_cannot_start_fails_its_job_and_holds_nothing(scheduler, cluster):
    job_id = submit(scheduler, 2, 2)

    class Unstartable(FakeRunner):
        def start(self):
            raise RuntimeError("can't start new thread")

    scheduler.runner_factory = Unstartable
    scheduler.tick()
    job = scheduler.store.get_job(job_id)
    assert job.state is JobState.FAILED and job.message == "cannot be started: RuntimeError: can't start new thread"
    assert job_id not in scheduler.runners and scheduler.free_resources() == cluster


def test_a_tenants_gpu_quota_caps_its_jobs_and_its_waiting_job_holds_up_no_other_tenant(scheduler, cluster, quotas):
    cluster["CPU"] = 16.0
    quotas["vision-lab"] = Quota(max_running_gpus=3)
    first = submit(scheduler, 1, 4, tenant="vision-lab")  # world sizes 1, 2, 4: the quota allows 2
    second = submit(scheduler, 2, 2, tenant="vision-lab")
    other = submit(scheduler, 2, 2, tenant="speech")
    scheduler.tick()
    assert scheduler.runners[first].world_size == 2
    assert second not in scheduler.runners and other in scheduler.runners
    assert scheduler.store.get_job(second).message == (
        "waiting for tenant vision-lab's GPU quota: 2 of 3 in use, it needs 2")
    # Growing is capped too: the first job may not take the quota's last GPU with a size of 4.
    assert scheduler.fit_world_size(scheduler.runners[first]) == 2

    scheduler.runners[first].finish()
    scheduler.tick()
    assert scheduler.runners[second].world_size == 2


def test_stopping_preempts_every_running_job_at_once_within_one_deadline(scheduler):
    jobs = [submit(scheduler, 2, 2) for _ in range(2)]
    scheduler.tick()
    for runner in scheduler.runners.values():
        runner.join = lambda timeout=None, runner=runner: runner.calls.append(("join", timeout))  # never stops
    unfinished = scheduler.stop(timeout_s=5.0)
    assert unfinished == jobs
    runners = [scheduler.runners[job] for job in jobs]
    assert all(r.preempt_reason == "the coordinator shut down" for r in runners)
    # One deadline for all: the second runner is given what the first left, not another 5 s.
    (first,), (second,) = ([t for _, t in r.calls] for r in runners)
    assert 0 < second <= first <= 5.0


def test_the_running_loop_admits_on_a_wake_without_waiting_for_its_periodic_read(scheduler):
    """The loop reads the queue on a wake (a job ended, a queued job was cancelled), not only every
    full_tick_s: set to an hour here, so that only the wakes can admit."""
    import time
    scheduler.full_tick_s = 3600.0

    def admitted(job_id):
        deadline = time.monotonic() + 5
        while job_id not in scheduler.runners and time.monotonic() < deadline:
            time.sleep(0.02)
        return job_id in scheduler.runners

    first, second = submit(scheduler, 4, 4), submit(scheduler, 4, 4)  # 4 trainers + 2 decoders each: one fits
    scheduler.start()
    try:
        assert admitted(first) and second not in scheduler.runners
        scheduler.runners[first].finish()  # its runner's exit wakes the loop
        assert admitted(second)
        # Behind a head that does not fit (6 CPUs, 2 free), a job that would (1 trainer + 1 decoder)
        # waits in strict order; cancelling the head is what wakes the loop to admit it.
        head, small = submit(scheduler, 4, 4), submit(scheduler, 1, 1, "data.decode_workers=1")
        time.sleep(0.5)
        assert head not in scheduler.runners and small not in scheduler.runners
        scheduler.cancel(head)
        assert admitted(small)
    finally:
        scheduler.stop(timeout_s=5)
