"""Admits queued jobs by priority, then first-in first-out, each as a gang that fits the free capacity.

Capacity is the cluster's Ray resources minus what running jobs reserved; a job's
reservation is its trainer gang plus its decode pool. The head of the queue blocks the
jobs behind it (strict order), so a large job is not starved by small ones. A head that does
not fit preempts running jobs of lower priority when that makes room: they checkpoint, give
their resources back and wait in the queue, from which they later resume exactly.

What a queued job may take is what the coordinator's own jobs leave free, but never more than Ray
reports available: room the coordinator does not count — another Ray user's, or a bundle Ray still
holds for a node that died — keeps a job in the queue, saying so, instead of admitting it to a
placement that cannot succeed.

A tenant's quota of running GPUs (trainers) caps its jobs' sizes, at start and when they grow; a job
its quota holds back waits, saying so, without holding up other tenants' jobs behind it.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from coordinator import metrics
from coordinator.discovery import ScrapeTargets
from coordinator.runner import JobRunner, RunnerSettings, resource_demand
from coordinator.state import InvalidTransition, JobState
from coordinator.store import JobNotFound, JobRecord, JobStore, QueuedJob
from coordinator.submission import derive_needs
from coordinator.tenancy import Quota
from internvideo.tasks.common import SharedConfig

log = logging.getLogger(__name__)
FULL_TICK_S = 30.0  # the queue is read at least this often, even when nothing seems to change


class Scheduler:
    def __init__(self, store: JobStore, settings: RunnerSettings,
                 cluster_resources: Callable[[], dict[str, float]], tick_s: float = 1.0,
                 scrape_targets: ScrapeTargets | None = None, runner_factory: Callable[..., JobRunner] = JobRunner,
                 quota: Callable[[str], Quota] = lambda tenant: Quota(),
                 available_resources: Callable[[], dict[str, float]] | None = None,
                 full_tick_s: float = FULL_TICK_S) -> None:
        self.store, self.settings = store, settings
        self.quota = quota
        self.available_resources = available_resources  # Ray's view of what is free now; None: trust our own
        self.runner_factory = runner_factory  # tests drive admission with fake runners
        self.scrape_targets = scrape_targets
        self.cluster_resources = cluster_resources
        self.tick_s, self.full_tick_s = tick_s, full_tick_s
        self.runners: dict[str, JobRunner] = {}
        self._room_wanted = False  # at the last tick: a job that could start waited for resources
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._requeue_orphans()
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> list[str]:
        """Stop admitting; running jobs checkpoint and go back to the queue, to resume when a
        coordinator runs again — all at once, within ``timeout_s`` in all. Returns the jobs whose
        runners had not finished by then (the next coordinator requeues them from their last
        committed checkpoint)."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)  # a tick checks the stop between admissions: it ends promptly
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.preempt("the coordinator shut down")
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        return [runner.job_id for runner in runners if runner.is_alive()]

    def active_runners(self) -> list[JobRunner]:
        with self._lock:
            return list(self.runners.values())

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        """Read the queue when something may have changed its answer: a wake (a submit, a cancel, a job
        that ended) or a change in the cluster's resources; otherwise only every ``full_tick_s`` (an
        idle coordinator with a deep queue reads nothing)."""
        woken, next_full_tick, seen = True, 0.0, None
        while not self._stop.is_set():
            try:
                view = (self.cluster_resources(), self.available_resources() if self.available_resources else {})
                if woken or view != seen or time.monotonic() >= next_full_tick:
                    seen, next_full_tick = view, time.monotonic() + self.full_tick_s
                    self.tick()
                if self.scrape_targets:
                    self.scrape_targets.update({r.job_id: r.metrics_endpoints for r in self.active_runners()})
            except Exception:  # noqa: BLE001 — the scheduler must outlive any one bad tick
                log.exception("scheduler tick failed")
            woken = self._wake.wait(self.tick_s)
            if woken:  # cleared only when seen: a wake between a timed-out wait and here is not lost
                self._wake.clear()

    def _requeue_orphans(self) -> None:
        """Jobs that held resources when a previous coordinator died lost their actors with it
        (Ray kills an owner's actors): they go back to the queue and resume from their last
        committed checkpoint, each exactly once."""
        jobs, _ = self.store.list_jobs(states=[s for s in JobState if s.active] + [JobState.PREEMPTED],
                                       limit=1_000_000)
        for job in jobs:
            checkpoints = self.store.checkpoints(job.job_id)
            resume = checkpoints[-1].path if checkpoints else "the start"
            self.store.transition(job.job_id, JobState.QUEUED, f"the coordinator restarted while the job was "
                                  f"{job.state.value}; resumes from {resume}", world_size=0)

    # -- admission ------------------------------------------------------------------------
    def free_resources(self) -> dict[str, float]:
        free = dict(self.cluster_resources())
        with self._lock:
            for runner in self.runners.values():
                for key, amount in runner.demand.items():
                    free[key] = free.get(key, 0.0) - amount
        return free

    def admission_room(self) -> tuple[dict[str, float], dict[str, float]]:
        """What queued jobs may take now, and how much of what our jobs leave free Ray holds for others."""
        free = self.free_resources()
        if self.available_resources is None:
            return free, {}
        available = self.available_resources()
        held_elsewhere = {k: v - available.get(k, 0.0) for k, v in free.items() if available.get(k, 0.0) < v - 1e-9}
        return {k: v - held_elsewhere.get(k, 0.0) for k, v in free.items()}, held_elsewhere

    def tick(self) -> None:
        free, held_elsewhere = self.admission_room()
        quotas: dict[str, Quota] = {}  # read once a tick
        self._room_wanted = False
        for queued in self.store.queue():
            if self._stop.is_set():
                return
            try:
                job = self._with_needs(queued)
            except Exception as err:  # noqa: BLE001 — a job whose record no longer reads fails; the queue goes on
                self._cannot_start(queued, err)
                continue
            quota = quotas.setdefault(job.tenant, self.quota(job.tenant))
            if not self._admit(job, free, quota, held_elsewhere):
                self._room_wanted = True
                return  # strict order: nothing jumps the head of the queue

    def _quota_room(self, tenant: str, quota: Quota, besides: JobRunner | None = None) -> int | None:
        """How many more trainers ``tenant``'s jobs may hold (not counting ``besides``'s); None: no limit."""
        if quota.max_running_gpus is None:
            return None
        with self._lock:
            held = sum(r.world_size for r in self.runners.values() if r.job.tenant == tenant and r is not besides)
        return max(0, quota.max_running_gpus - held)

    def _admit(self, job: QueuedJob, free: dict[str, float], quota: Quota, held_elsewhere: dict[str, float]) -> bool:
        """Start ``job`` if it may and fits (taking its resources from ``free``); False if it waits
        for room, which holds up the jobs behind it."""
        if not self._dependencies_succeeded(job):
            return True  # it waits for jobs that are themselves queued or running: it blocks nobody
        room = self._quota_room(job.tenant, quota)
        if room is not None and room < min(job.needs.world_sizes):
            self._note(job, f"waiting for tenant {job.tenant}'s GPU quota: {quota.max_running_gpus - room} of "
                            f"{quota.max_running_gpus} in use, it needs {min(job.needs.world_sizes)}")
            return True  # its own tenant's quota holds it, not the cluster: it blocks nobody else
        world = self._fitting_world_size(job, free, room)
        if world is None:
            self._note_waiting(job, free, held_elsewhere)
            self._preempt_for(job, free)
            return False
        queued_at = self.store.queued_since(job.job_id)
        try:
            record = dataclasses.replace(self.store.get_job(job.job_id), needs=job.needs)
            runner = self.runner_factory(self.store, record, world, self.settings, on_exit=self._runner_exited,
                                         fit_world_size=self.fit_world_size, grow_target=self.grow_target,
                                         decode_limit=self.decode_limit)
        except Exception as err:  # noqa: BLE001 — its config no longer reads: it fails, the queue goes on
            self._cannot_start(job, err)
            return True
        with self._lock:  # atomic with cancel(): a job is either still QUEUED or has its runner
            try:
                self.store.transition(job.job_id, JobState.STARTING, f"starting {world} workers", world_size=world)
            except InvalidTransition:
                return True  # cancelled since the queue was read
            self.runners[job.job_id] = runner
            # Started under the lock: cancel() finds a runner only once its thread can be joined.
            try:
                runner.start()
                no_thread = None
            except Exception as err:  # noqa: BLE001 — no thread for it (the process is at its limit): it fails
                self.runners.pop(job.job_id, None)
                no_thread = err
        if no_thread is not None:
            self._cannot_start(job, no_thread)
            return True
        metrics.QUEUE_WAIT.observe(time.time() - queued_at)
        for key, amount in runner.demand.items():
            free[key] = free.get(key, 0.0) - amount
        return True

    def _cannot_start(self, job: QueuedJob, err: Exception) -> None:
        log.error("job %s cannot be started", job.job_id, exc_info=err)
        self._end_queued(job, JobState.FAILED, f"cannot be started: {type(err).__name__}: {err}")

    def _dependencies_succeeded(self, job: QueuedJob) -> bool:
        """Whether every job it starts from (``job:<id>``) has succeeded. One that failed or was
        cancelled fails it, saying why; one still on its way makes it wait, saying for what."""
        for dependency in job.needs.depends_on:
            try:
                state, message = (d := self.store.get_job(dependency)).state, d.message
            except JobNotFound:
                state, message = JobState.FAILED, "it no longer exists"
            if state is JobState.SUCCEEDED:
                continue
            if state.terminal:
                self._end_queued(job, JobState.FAILED, f"job {dependency}, which it starts from, "
                                                       f"{state.value.lower()}: {message}")
            else:
                self._note(job, f"waiting for job {dependency} ({state.value}) to succeed")
            return False
        return True

    def _end_queued(self, job: QueuedJob, state: JobState, message: str) -> None:
        with self._lock:  # atomic with cancel(), as admission is
            try:
                self.store.transition(job.job_id, state, message, world_size=0)
            except InvalidTransition:
                pass  # cancelled meanwhile: that stands
        self.wake()  # its own dependants learn at the next tick

    def _preempt_for(self, job: QueuedJob, free: dict[str, float]) -> None:
        """Preempt the fewest lowest-priority (then most recently started) running jobs whose
        resources, with what is free, let ``job`` start; none if even all of them would not."""
        with self._lock:
            runners = list(self.runners.values())  # in admission order
        freeing = [r for r in runners if r.preempting]
        # Lowest priority first; within a priority the last admitted first (a stable sort of the reversed order).
        candidates = sorted((r for r in reversed(runners) if not r.preempting and r.job.priority < job.priority),
                            key=lambda r: r.job.priority)
        room = dict(free)
        victims: list[JobRunner] = []
        for runner in freeing + candidates:
            if self._fitting_world_size(job, room) is not None:
                break
            for key, amount in runner.demand.items():
                room[key] = room.get(key, 0.0) + amount
            if runner in candidates:
                victims.append(runner)
        if self._fitting_world_size(job, room) is None:
            return
        for victim in victims:
            log.info("preempting %s (priority %d) for %s (priority %d)", victim.job_id, victim.job.priority,
                     job.job_id, job.priority)
            victim.preempt(f"preempted by {job.job_id} (priority {job.priority} > {victim.job.priority})")

    def fit_world_size(self, runner: JobRunner) -> int | None:
        """The largest world size ``runner``'s job could have now, counting what it holds itself."""
        free = self.free_resources()
        for key, amount in runner.demand.items():
            free[key] = free.get(key, 0.0) + amount
        return self._fitting_world_size(runner.job, free,
                                        self._quota_room(runner.job.tenant, self.quota(runner.job.tenant), runner))

    def grow_target(self, runner: JobRunner) -> int:
        """The size a running job may grow to: what fits, but only while no queued job that could start
        waits for room (queued jobs come before growth; one held by its quota or its dependencies does not)."""
        if self._room_wanted:
            return runner.world_size
        return self.fit_world_size(runner) or runner.world_size

    def decode_limit(self, runner: JobRunner) -> int:
        """The most decode workers a running job may hold now: its starting size while a queued job waits
        for room (waiting jobs come before bigger pools), else its pool plus what free CPUs fit."""
        data = runner.config.data
        if self._room_wanted:
            return data.decode_workers
        free_cpus = max(0.0, self.free_resources().get("CPU", 0.0))
        return runner.decode_workers + int(free_cpus / data.decode_cpus + 1e-9)

    def _with_needs(self, job: QueuedJob) -> QueuedJob:
        """The job with what was derived at submit; a job stored before needs were gets them
        derived once, here, and stored."""
        if job.needs is not None:
            return job
        config = self.store.get_job(job.job_id).config
        needs = derive_needs(SharedConfig.model_validate(config), job.min_workers, job.max_workers)
        self.store.update_job(job.job_id, needs=needs.to_json())
        return dataclasses.replace(job, needs=needs)

    def _fitting_world_size(self, job: QueuedJob | JobRecord, free: dict[str, float],
                            most: int | None = None) -> int | None:
        """The largest of the job's world sizes whose resources ``free`` holds, up to ``most`` trainers."""
        sizes = [w for w in job.needs.world_sizes
                 if (most is None or w <= most) and all(free.get(k, 0.0) >= v - 1e-9
                        for k, v in resource_demand(job.needs, w, self.settings.trainer_bundle).items())]
        return max(sizes) if sizes else None

    def _note_waiting(self, job: QueuedJob, free: dict[str, float], held_elsewhere: dict[str, float]) -> None:
        need = resource_demand(job.needs, job.min_workers, self.settings.trainer_bundle)
        short = [k for k, v in sorted(need.items()) if free.get(k, 0.0) < v]
        message = "waiting for resources: needs " + ", ".join(
            f"{k} {need[k]:g} (free {max(0.0, free.get(k, 0.0)):g})" for k in short)
        elsewhere = {k: held_elsewhere[k] for k in short if k in held_elsewhere}
        if elsewhere:
            message += "; Ray holds " + ", ".join(f"{k} {v:g}" for k, v in elsewhere.items()) + (
                " that no job of this coordinator does (another Ray user's, or a bundle of a node that died)")
        self._note(job, message)

    def _note(self, job: QueuedJob, message: str) -> None:
        """Say why a queued job waits (written only when the reason changes)."""
        if job.message != message:
            self.store.update_job(job.job_id, message=message)

    def _runner_exited(self, runner: JobRunner) -> None:
        with self._lock:
            self.runners.pop(runner.job_id, None)
        self.wake()

    # -- requests -------------------------------------------------------------------------
    def cancel(self, job_id: str, wait_s: float = 30.0) -> JobRecord:
        """Cancel a job; waits (up to ``wait_s``) for a running one to release its actors."""
        job = self.store.get_job(job_id)
        if job.state.terminal:
            raise InvalidTransition(f"job {job_id} already ended ({job.state.value}); nothing to cancel")
        with self._lock:
            runner = self.runners.get(job_id)
            if runner is None:
                cancelled = self.store.transition(job_id, JobState.CANCELLED, "cancelled by request")
                self.wake()  # the jobs behind it may start now
                return cancelled
        runner.cancel()
        runner.join(wait_s)
        return self.store.get_job(job_id)
