"""JobRunner: owns one job's actors while the job holds resources, and writes what happens to the store.

The runner is the only writer of a running job's record: it takes the job the scheduler
moved to STARTING through RUNNING → SUCCEEDED | FAILED | CANCELLED, or back to QUEUED when
it is preempted or fewer than its minimum of workers are left. It drives the worker group in
streamed chunks of steps (up to the next checkpoint), commits checkpoints, and tears every actor down on the way out.

A job may be run by several runners in turn (requeued, or after a coordinator restart): each
starts from the job's last committed checkpoint, and the job's result comes from its history's
running totals (``coordinator.history``), so it covers every attempt.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prometheus_client import Gauge

from coordinator import metrics
from coordinator.autoscale import DecodePoolSizer, PoolDecision
from coordinator.efficiency import job_efficiency
from coordinator.history import HistoryTotals
from coordinator.predictions import CommittedShards, ShardPlan, merge_rank_outputs
from coordinator.recovery import Decision, FailurePolicy, failure_cause
from coordinator.state import InvalidTransition, JobState
from coordinator.store import JobNeeds, JobRecord, JobStore
from coordinator.usage import JobUsage, Usage, UsageLedger
from internvideo.data.order import GlobalBatchPlan
from internvideo.tasks import Task, TaskRef
from internvideo.tasks.base import clips_per_sample
from internvideo.tasks.common import SharedConfig, replace_job_refs
from workers.calls import PlacementTimeout, WorkerGroupError, kill_actors
from workers.checkpoint import UNIVERSAL, checkpoint_folder, commit, loads_as_saved, to_universal
from workers.decode import DataError, Dataset, DecodePool, PoolSpec
from workers.engine import engine_zero_stage, trained_weights
from workers.group import WorkerGroup

log = logging.getLogger(__name__)

# What the job's record keeps of each worker's set-up answer (its device, for MFU and energy).
WORKER_FACTS = ("device_name", "peak_flops", "peak", "energy_sources")


@dataclass(frozen=True)
class RunnerSettings:
    state_dir: Path
    trainer_bundle: dict[str, float]  # resources of one trainer: {"GPU": 1, "CPU": 1} or {"CPU": 1}
    start_timeout_s: float = 300.0
    # How long a gang waits for its placement group before the job re-fits its size to the cluster
    # (a dead node's resources can look alive until Ray's health checks notice), and how many such
    # waits in a row before it goes back to the queue instead (where it waits for room Ray reports,
    # saying what is missing): a placement never waits without end.
    placement_timeout_s: float = 60.0
    placement_tries: int = 2
    worker_host: str | None = None  # where workers listen; None: each one's Ray node address

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id


@dataclass
class BadVideos:
    """The videos of one list that could not be decoded, counted against the list's size (a mixing
    partner is of the same list; a held-out video is not the training list's)."""

    what: str
    paths: frozenset[str]
    bad: set[str]

    def __init__(self, what: str, records: list, known_bad: set[str]) -> None:
        self.what, self.paths = what, frozenset(r.path for r in records)
        self.bad = known_bad & self.paths

    def add(self, skips: list[dict[str, Any]], max_fraction: float) -> None:
        self.bad.update(skip["path"] for skip in skips if skip["path"] in self.paths)
        if len(self.bad) > max_fraction * len(self.paths):
            raise DataError(f"{len(self.bad)} of the {len(self.paths)} videos of {self.what} could not be "
                            f"decoded, more than data.max_bad_fraction={max_fraction}; see the job's skipped videos")


class JobCancelled(Exception):
    """The user cancelled the job."""


class Requeue(Exception):
    """The job gives its resources back and waits in the queue; it resumes from its last
    committed checkpoint. ``preempted``: it was asked to make room (state PREEMPTED first)."""

    def __init__(self, reason: str, preempted: bool = False) -> None:
        super().__init__(reason)
        self.preempted = preempted


class GrowAt(Exception):
    """More workers fit: stop at this committed checkpoint (an evaluation: its committed shards, None)
    and restart larger."""

    def __init__(self, checkpoint: Path | None, world_size: int) -> None:
        super().__init__(f"growing to {world_size} workers at {checkpoint or 'the committed shards'}")
        self.checkpoint, self.world_size = checkpoint, world_size


def resource_demand(needs: JobNeeds, world_size: int, bundle: dict[str, float],
                    decode_workers: int | None = None) -> dict[str, float]:
    """Everything a job holds while it runs: the trainer gang and its decode pool (by default at its
    starting size)."""
    demand = {k: v * world_size for k, v in bundle.items()}
    pool = needs.decode_workers if decode_workers is None else decode_workers
    demand["CPU"] = demand.get("CPU", 0.0) + pool * needs.decode_cpus
    return demand


def eval_result(totals: HistoryTotals, predicted: int, plan: ShardPlan, failures: int) -> dict[str, Any]:
    """What an evaluation did, over all its attempts: the samples it predicted (``predicted``, from its
    committed shards; the rest could not be decoded) and how fast its shards went."""
    seconds = totals.seconds
    return {"samples": predicted, "eval_seconds": seconds,
            "clips_per_second": totals.samples / seconds if seconds else 0.0,
            "shards": plan.num_shards, "skipped_videos": totals.skipped_videos, "failures": failures}


def run_result(totals: HistoryTotals, total_steps: int, failures: int) -> dict[str, Any]:
    """What a job did, summed over all its attempts (a step executed again after a failure or a restart
    counts again): ``first_loss``, ``final_<name>`` of every metric the kind reports, and ``val_<name>``
    of its last validation."""
    samples, seconds = totals.samples, totals.seconds
    start_step = totals.first_step - 1 if totals.steps else total_steps
    last = totals.last_metrics if totals.steps else {"loss": float("nan")}
    return {"first_loss": totals.first_loss if totals.steps else float("nan"),
            **{f"final_{name}": value for name, value in last.items()},
            **{f"val_{name}": value for name, value in totals.validation.items()},
            "start_step": start_step, "steps": totals.steps, "samples": samples, "train_seconds": seconds,
            "clips_per_second": samples / seconds if seconds else 0.0,
            "final_checkpoint": totals.checkpoint, "skipped_videos": totals.skipped_videos, "failures": failures,
            # Every step from start_step on ran at least once; any execution beyond that was a redo.
            "steps_redone": totals.steps - (total_steps - start_step)}


class JobRunner(threading.Thread):
    def __init__(self, store: JobStore, job: JobRecord, world_size: int, settings: RunnerSettings,
                 on_exit: Callable[["JobRunner"], None],
                 fit_world_size: Callable[["JobRunner"], int | None] | None = None,
                 grow_target: Callable[["JobRunner"], int] | None = None,
                 decode_limit: Callable[["JobRunner"], int] | None = None) -> None:
        """``fit_world_size``: the largest world size this job could have now (None: not even the
        minimum); asked after a failure. Without it a job restarts at the size it had.
        ``grow_target``: the world size the job may grow to now; asked at each checkpoint.
        ``decode_limit``: the most decode workers the job may hold now; asked after each step when
        its pool may change size. Without it the pool may grow to its configured maximum."""
        super().__init__(name=f"runner-{job.job_id}", daemon=True)
        self.store, self.job, self.settings = store, job, settings
        self.config = SharedConfig.model_validate(job.config)  # what any kind has; the rest is the kind's
        assert job.needs is not None, "the scheduler hands over records with their needs"
        self.task_ref: TaskRef | None = None  # loaded when the job starts (its job:<id> weights resolved)
        self.task: Task | None = None
        self.world_size = world_size
        self.metrics_endpoints: dict[str, list[str]] = {}  # component → host:port of each /metrics
        self.decode_workers = self.config.data.decode_workers  # the pool's size (kept across attempts)
        data = self.config.data
        self._sizer = DecodePoolSizer(data.decode_workers, data.max_decode_workers, data.data_wait_target,
                                      data.autoscale_window)
        self._pool_decision: PoolDecision | None = None  # a resize the running chunk is stopping for
        self._decode_limit = decode_limit
        self.policy = FailurePolicy(self.config.max_failures)
        self.failures = job.failures
        self._fit_world_size = fit_world_size
        self._grow_target = grow_target
        self._pool: DecodePool | None = None
        self._group: WorkerGroup | None = None
        self._checkpointed_step = -1
        self._placement_timeouts = 0  # in a row, since the last gang that was placed
        self._held_out = 0  # held-out samples (data.val_list), counted once when the job starts
        self._bad: dict[str, BadVideos] = {}  # by list: "data", "held_out"
        self._shards: ShardPlan | None = None  # an evaluation's unit of work
        self._predictions = CommittedShards(settings.job_dir(job.job_id) / "predictions")
        self.usage = UsageLedger()  # where the job's GPU-time and energy go (flushed to the store)
        self._so_far = JobUsage({}, 0.0)  # the job's totals, over all attempts (read when it starts)
        self._start_use = "startup"  # what bringing the next attempt up counts as ("recovery" after a failure)
        self._exported: set[tuple[Gauge, str]] = set()  # (gauge, metric name) this job set: removed at its end
        self._cancel = threading.Event()
        self._preempt_reason = ""
        self._on_exit = on_exit

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def demand(self) -> dict[str, float]:
        return resource_demand(self.job.needs, self.world_size, self.settings.trainer_bundle, self.decode_workers)

    @property
    def preempting(self) -> bool:
        return bool(self._preempt_reason)

    def cancel(self) -> None:
        self._cancel.set()

    def preempt(self, reason: str) -> None:
        """Checkpoint at the next step boundary, release everything, go back to the queue."""
        self._preempt_reason = reason
        self._cancel.set()

    def _check_cancel(self) -> None:
        if not self._cancel.is_set():
            return
        if self._preempt_reason:
            raise Requeue(self._preempt_reason, preempted=True)
        raise JobCancelled()

    def run(self) -> None:
        outcome = (JobState.SUCCEEDED, "")
        try:
            # The kind, through the registry: the runner only calls the Task interface.
            self.task_ref = TaskRef.of(self.job.kind, replace_job_refs(self.job.config, self._final_checkpoint))
            self.task = self.task_ref.load()
            self._so_far = self._usage_so_far()
            data = self.task.config.data  # the kind's: its lists may be read its own way (subsets, say)
            known_bad = {video.path for video in self.store.skipped_videos(self.job_id)}
            records = (data.val_source() if self.config.evaluates else data.source()).read()
            self._bad = {"data": BadVideos("the list", records, known_bad)}
            if self.config.evaluates:
                num_samples = self.task.sample_count(records)
                self._shards = ShardPlan(num_samples, self.config.eval.shard_size)
                self._predictions.bind(self._shards, self.task.plan_key(records))
            else:
                num_samples = len(records)
            if not self.config.evaluates and data.val_list:
                held_out = data.val_source().read()
                self._held_out = len(held_out)
                self._bad["held_out"] = BadVideos("the held-out list", held_out, known_bad)
            resume = self._resume_point()
            while True:
                try:
                    self._attempt(num_samples, resume)
                    break
                except GrowAt as grow:
                    resume = self._grow(grow)
                except PlacementTimeout as err:  # no room at this size (yet): re-fit, not a failure
                    self._placement_timeouts += 1
                    if self._placement_timeouts >= self.settings.placement_tries:
                        raise Requeue(f"not placed in {self._placement_timeouts} tries: {err}") from err
                    resume = self._recover(err, count_failure=False)
                except WorkerGroupError as err:
                    resume = self._recover(err)
            self._release()  # before the result, so that its GPU-time includes the teardown
            self.store.record_result(self.job_id, self._result())
        except JobCancelled:
            outcome = (JobState.CANCELLED, "cancelled by request")
        except Requeue as requeue:
            outcome = (JobState.QUEUED, self._requeued(requeue))
        except Exception as err:  # noqa: BLE001 — any failure ends the job, with its reason
            log.exception("job %s failed", self.job_id)
            outcome = (JobState.FAILED, f"{type(err).__name__}: {err}")
        finally:
            # Release everything before the job is seen to end, so that its end means "resources free";
            # tell the scheduler after, so that what it reads on waking is the job's end (a dependant
            # may start, a requeued job is in the queue).
            self._release()
            for gauge, name in self._exported:
                gauge.remove(self.job_id, self.job.kind, name)
            try:
                self.store.transition(self.job_id, *outcome, world_size=0)
            except InvalidTransition as err:  # cancelled while it was releasing: the cancel stands
                log.info("job %s: %s", self.job_id, err)
            finally:
                self._on_exit(self)

    def _result(self) -> dict[str, Any]:
        totals = self.store.totals(self.job_id)
        if self.config.evaluates:
            outputs = self._predictions.load(self._shards)
            if len(outputs["sample_ids"]) == 0:
                raise DataError(f"not one of the {self._shards.num_samples} videos could be decoded")
            evaluation = self.task.evaluate(outputs, self.settings.job_dir(self.job_id))
            if evaluation.artifacts:  # what a job:<id> of this job means
                self.store.record_checkpoint(self.job_id, self._shards.num_shards, evaluation.artifacts, self.world_size)
            efficiency = job_efficiency(totals, self._so_far, None)
            return {**eval_result(totals, len(outputs["sample_ids"]), self._shards, self.failures),
                    **efficiency.as_metrics(), **evaluation.metrics, "final_checkpoint": evaluation.artifacts,
                    "details": {"metrics": evaluation.metrics, **evaluation.details}}
        efficiency = job_efficiency(totals, self._so_far, self.config.train.global_batch)
        return {**run_result(totals, self.config.train.steps, self.failures), **efficiency.as_metrics()}

    def _final_checkpoint(self, job_id: str) -> str:
        """Where job ``job_id`` ended: the checkpoint a ``job:<id>`` in this job's config means."""
        checkpoints = self.store.checkpoints(job_id)
        if not checkpoints:
            raise RuntimeError(f"job {job_id}, which this job starts from, committed no checkpoint")
        return checkpoints[-1].path

    def _resume_point(self) -> Path | None:
        """The job's newest committed checkpoint (it ran before: requeued or restarted), else the
        checkpoint its config starts from, else None (and always None for an evaluation, which
        resumes from its committed shards)."""
        if self.config.evaluates:
            return None
        checkpoints = self.store.checkpoints(self.job_id)
        if checkpoints:
            return Path(checkpoints[-1].path)
        return Path(self.config.train.resume_from) if self.config.train.resume_from else None

    def _where(self, resume: Path | None) -> str:
        """Where the next attempt starts, in words."""
        if self.config.evaluates:
            return f"its {len(self._predictions.done())} committed shards"
        return str(resume) if resume else "the start"

    def _requeued(self, requeue: Requeue) -> str:
        if requeue.preempted:
            self.store.transition(self.job_id, JobState.PREEMPTED, str(requeue), world_size=0)
        resume = self._resume_point()
        return f"{requeue}; resumes from {self._where(resume)}"

    def _attempt(self, num_samples: int, resume: Path | None) -> None:
        """Start the decode pool and the worker group, restore ``resume``, train (or evaluate) to the end."""
        if self.config.evaluates and len(self._predictions.done()) == self._shards.num_shards:
            # Every shard was committed before (a coordinator died before the result): no workers needed.
            self.store.transition(self.job_id, JobState.RUNNING, "every shard is committed", world_size=0)
            return
        data = self.task.config.data
        if self.config.evaluates:  # the evaluated list is what the pool decodes
            work, held_out = Dataset(data.val_source(), self.task.sample_fn(), replace_bad=False), None
        else:
            work = Dataset(data.source(), self.task.sample_fn())
            held_out = Dataset(data.val_source(), self.task.val_sample_fn(), replace_bad=False) if self._held_out else None
        pool_spec = PoolSpec(job_id=self.job_id, data=work,
                             seed=self.config.seed, held_out=held_out, cpus=data.decode_cpus,
                             threads=data.threads_per_decode_worker, host=self.settings.worker_host,
                             restarts=data.decode_restarts, delay_s=self.config.debug.decode_delay_s)
        self._pool_decision = None  # one for an earlier attempt's pool
        grown = self.decode_workers  # what an earlier attempt had grown the pool to
        self._pool = DecodePool.create(pool_spec, data.decode_workers, self.settings.start_timeout_s)
        limit = self._decode_limit(self) if self._decode_limit else grown
        if min(grown, limit) > data.decode_workers:  # regrow, as far as the cluster still has room
            self._pool.resize(min(grown, limit), timeout_s=min(self.settings.start_timeout_s, 30.0))
        self.decode_workers = len(self._pool.actors)
        folder = self._loadable(resume)
        self._check_cancel()
        self._group = WorkerGroup.create(
            job_id=self.job_id, task=self.task_ref, world_size=self.world_size,
            bundle=self.settings.trainer_bundle, num_samples=num_samples, decode_actors=self._pool.actors,
            host=self.settings.worker_host, timeout_s=self.settings.start_timeout_s,
            placement_timeout_s=self.settings.placement_timeout_s,
            load_universal=folder is not None and folder.name == UNIVERSAL)
        self._placement_timeouts = 0
        self.usage.hold(self.world_size, since=self._group.placed_at)
        self.usage.charge(self._start_use, self._group.last_call_joules)
        self.store.record_workers(self.job_id, [{k: info[k] for k in WORKER_FACTS} for info in self._group.infos])
        self.metrics_endpoints = {"trainer": self._group.metrics_endpoints, "decode": self._pool.metrics_endpoints}
        start_step = 0 if self.config.evaluates else self._restore(folder)
        self._start_use = "startup"
        self._check_cancel()
        self.store.transition(self.job_id, JobState.RUNNING,
                              f"{self.world_size} workers, {self.decode_workers} decode workers",
                              world_size=self.world_size)
        if self.config.evaluates:
            self._evaluate(num_samples)
        else:
            self._train(start_step, num_samples)

    def _recover(self, error: WorkerGroupError, count_failure: bool = True) -> Path | None:
        """Tear down, decide, and re-fit; returns the checkpoint the next attempt starts from.
        Below ``min_workers`` the job goes back to the queue instead of holding on."""
        self.usage.charge("recovery")  # the call that failed
        if count_failure:
            self._start_use = "recovery"
        self._release()
        if count_failure:
            metrics.WORKER_FAILURES.labels(cause=failure_cause(error)).inc()
            self.failures += 1
            self.store.update_job(self.job_id, failures=self.failures)
            if self.policy.decide(error, self.failures) is Decision.FAIL:
                section = "eval" if self.config.evaluates else "train"
                raise RuntimeError(f"giving up after failure {self.failures} "
                                   f"({section}.max_failures={self.policy.max_failures}): {error}") from error
        resume = self._resume_point()
        what = (f"failure {self.failures} of at most {self.policy.max_failures}" if count_failure
                else "no room for the workers yet")
        message = f"{what}: {error}; restarting from {self._where(resume)}"
        if self.store.get_job(self.job_id).state is JobState.RECOVERING:
            self.store.update_job(self.job_id, message=message, world_size=0)
        else:
            self.store.transition(self.job_id, JobState.RECOVERING, message, world_size=0)
        self._check_cancel()
        world = self._fit_world_size(self) if self._fit_world_size else self.world_size
        if not world:
            raise Requeue(f"fewer than min_workers={self.job.min_workers} workers fit after: {what}")
        if world != self.world_size:
            metrics.RESCALES.labels(cause="failure" if count_failure else "no_room").inc()
        self.world_size = world
        return resume

    def _grow(self, grow: GrowAt) -> Path | None:
        self._release()
        self.store.transition(self.job_id, JobState.RESCALING,
                              f"{self.world_size} → {grow.world_size} workers from "
                              f"{grow.checkpoint or 'the committed shards'}", world_size=0)
        metrics.RESCALES.labels(cause="grow").inc()
        self.world_size = grow.world_size
        return grow.checkpoint

    def _release(self) -> None:
        self.usage.lost()  # steps no checkpoint holds
        for part in (self._group, self._pool):
            if part is not None:
                part.shutdown()
        self.usage.release("teardown")
        self._flush_usage()
        self._group = self._pool = None
        self.metrics_endpoints = {}

    def _usage_so_far(self) -> JobUsage:
        """The job's GPU-time by use from earlier attempts; held time a dead coordinator's runner had
        not charged yet (steps done since its last checkpoint) is charged as redone now."""
        _, usage = self.store.usage([self.job_id]).get(self.job_id, ("", JobUsage({}, 0.0)))
        if usage.unaccounted > 1e-6:
            lost = {"redone": Usage(usage.unaccounted, 0.0)}
            self.store.add_usage(self.job_id, lost, 0.0)
            usage = usage.plus(lost, 0.0)
        return usage

    def _flush_usage(self) -> None:
        charged, held = self.usage.flush()
        if charged or held:
            self.store.add_usage(self.job_id, charged, held)
            self._so_far = self._so_far.plus(charged, held)

    def _call(self, method: str, *args: Any, use: str, timeout_s: float) -> list[Any]:
        """``method`` on every worker, its time and energy charged to ``use``."""
        results = self._group.call(method, *args, timeout_s=timeout_s)
        self.usage.charge(use, self._group.last_call_joules)
        return results

    def _loadable(self, folder: Path | None) -> Path | None:
        """``folder`` as this world size and precision can load it: converted to the universal layout
        when it was saved at another world size, ZeRO stage or in weights of another dtype (the global
        batch, and with it the data cursor, is the same). The engines' weights and stage are where the
        job's settings alone decide them (the weights are None where the workers' devices do)."""
        if folder is None:
            return None
        train = self.config.train
        weights = trained_weights(train.precision, train.zero_stage)
        stage = engine_zero_stage(train.zero_stage, world_size=self.world_size, weights=weights)
        as_saved = loads_as_saved(folder, world_size=self.world_size, zero_stage=stage,
                                  weights=str(weights) if weights is not None else None)
        return folder if as_saved else to_universal(folder)

    def _restore(self, folder: Path | None) -> int:
        if folder is None:
            step = 0
        else:
            steps = set(self._call("load_checkpoint", str(folder), use=self._start_use,
                                   timeout_s=self.settings.start_timeout_s))
            if len(steps) != 1:
                raise RuntimeError(f"ranks restored different steps from {folder}: {sorted(steps)}")
            step = steps.pop()
        self._checkpointed_step = step
        return step

    def _train(self, start_step: int, num_samples: int) -> None:
        """Train from ``start_step`` in streamed chunks: each chunk is one call per worker that runs until
        the next checkpoint or hold point, or until the runner asks it to stop (a cancel, a preemption, a
        decode pool to resize), which takes effect after the step in progress on every rank."""
        train = self.config.train
        step = start_step
        while step < train.steps:
            self._hold(step)
            if self._preempt_reason and self._checkpointed_step < step:
                self._checkpoint(step)  # a preempted job loses no step
            self._check_cancel()
            step = self._train_chunk(step, self._chunk_end(step), num_samples)
            if self._pool_decision is not None:
                self._resize_decode_pool(self._pool_decision)
            if step == train.steps or (train.checkpoint_every and step % train.checkpoint_every == 0):
                checkpoint = self._checkpoint(step)
                if self._held_out:
                    self._validate(step)
                target = self._grow_target(self) if self._grow_target and step < train.steps else 0
                if target > self.world_size:
                    raise GrowAt(Path(checkpoint), target)
            self._flush_usage()

    def _chunk_end(self, step: int) -> int:
        """Where a chunk from ``step`` ends at the latest: the next checkpoint, hold point or the end."""
        train = self.config.train
        ends = [train.steps, *(h for h in self.config.debug.hold_at_steps if h > step)]
        if train.checkpoint_every:
            ends.append((step // train.checkpoint_every + 1) * train.checkpoint_every)
        return min(ends)

    def _train_chunk(self, start: int, end: int, num_samples: int) -> int:
        """Steps ``start`` to ``end - 1`` streamed from the workers, each recorded as it arrives (while the
        workers run the next); returns the step the chunk stopped before."""
        train = self.config.train
        # The plan's epochs: whole global batches of samples (a sample may be several clips), the tail dropped.
        steps_per_epoch = GlobalBatchPlan(num_samples, train.global_batch // clips_per_sample(self.task.sample_fn()),
                                          train.seed).steps_per_epoch
        self.usage.charge("overhead")  # the runner's own work since the previous chunk

        def stop_wanted() -> bool:
            return self._cancel.is_set() or self._pool_decision is not None

        began, step = time.perf_counter(), start
        for step, reports, joules in self._group.train_steps(start, end, timeout_s=train.step_timeout_s,
                                                             stop_wanted=stop_wanted):
            arrived = time.perf_counter()
            worker_seconds = max(r["seconds"] for r in reports)  # the slowest rank's own time in the step
            # The step as the job saw it: since the previous one arrived (the runner's own work overlaps the
            # workers' next step), but never less than the workers' own time (steps that queued up while the
            # runner was busy arrive together).
            seconds = max(arrived - began, worker_seconds)
            began = arrived
            self.usage.step(step, [r["data_wait_seconds"] for r in reports], joules)
            self._flush_usage()
            step_samples = sum(r["samples"] for r in reports)
            self._record_skips([skip for report in reports for skip in report["skipped"]], "data")
            if train.record_samples:
                self._log_samples(step, reports)
            step_metrics = {name: statistics.fmean(r["metrics"][name] for r in reports) for name in reports[0]["metrics"]}
            self.store.record_progress(self.job_id, {
                "step": step + 1, "total_steps": train.steps, "samples": (step + 1) * train.global_batch,
                "epoch": step // steps_per_epoch, "loss": step_metrics["loss"],
                "metrics": step_metrics,
                "clips_per_second": step_samples / seconds, "step_seconds": seconds, "step_samples": step_samples,
                "worker_seconds": worker_seconds,
                "data_wait_fraction": statistics.fmean(r["data_wait_seconds"] / r["seconds"] for r in reports),
                "world_size": self.world_size, "decode_workers": self.decode_workers,
                "model_flops": sum(r["model_flops"] for r in reports), "step_joules": joules,
                "held_gpu_seconds": self._so_far.held_gpu_seconds,
                "kept_gpu_seconds": self._so_far.of("kept").gpu_seconds, "joules": self._so_far.joules,
            })
            self._export(metrics.STEP_METRIC, step_metrics)
            # The slowest rank gates a step; a resize waits for the chunk to stop (workers are mid-step now).
            self._pool_decision = self._pool_decision or self._decode_decision(
                max(r["data_wait_seconds"] / r["seconds"] for r in reports))
            step += 1
        return step

    def _evaluate(self, num_samples: int) -> None:
        """Predict every shard no earlier runner committed, committing each as it completes."""
        plan = self._shards
        for shard in sorted(set(range(plan.num_shards)) - self._predictions.done()):
            self._hold(shard)  # ``debug.hold_at_steps`` counts shards here: all before this one are done
            self._check_cancel()
            self.usage.charge("overhead")
            sample_ids = plan.sample_ids(shard)
            began = time.perf_counter()
            reports = self._group.call("evaluate", sample_ids, timeout_s=self.config.eval.shard_timeout_s)
            seconds = time.perf_counter() - began
            self.usage.step(shard, [r["data_wait_seconds"] for r in reports], self._group.last_call_joules)
            outputs, skipped = merge_rank_outputs(reports, sample_ids)
            self._record_skips(skipped, "data")
            path = self._predictions.commit(shard, outputs)
            self.usage.kept(shard + 1)
            done = self._predictions.done()
            predicted = len(outputs["sample_ids"])
            self.store.record_shard(self.job_id, {"shard": shard, "num_shards": plan.num_shards, "samples": predicted,
                                                  "path": str(path), "world_size": self.world_size})
            self.store.record_progress(self.job_id, {
                "unit": "shard", "step": len(done), "total_steps": plan.num_shards,
                "samples": sum(len(plan.sample_ids(s)) for s in done), "step_samples": predicted,
                "clips_per_second": predicted / seconds, "step_seconds": seconds,
                "data_wait_fraction": statistics.fmean(r["data_wait_seconds"] / r["seconds"] if r["seconds"] else 0.0
                                                       for r in reports),
                "world_size": self.world_size, "decode_workers": self.decode_workers,
                "model_flops": sum(r["model_flops"] for r in reports), "step_joules": self._group.last_call_joules,
                "held_gpu_seconds": self._so_far.held_gpu_seconds,
                "kept_gpu_seconds": self._so_far.of("kept").gpu_seconds, "joules": self._so_far.joules,
            })
            self._flush_usage()
            target = self._grow_target(self) if self._grow_target and len(done) < plan.num_shards else 0
            if target > self.world_size:
                raise GrowAt(None, target)

    def _hold(self, step: int) -> None:
        """``debug.hold_at_steps``: wait here, ``step`` steps done, until the job's release file exists
        (a test's control point); a cancel or preemption ends the wait."""
        if step not in self.config.debug.hold_at_steps:
            return
        release = self.settings.job_dir(self.job_id) / f"release-{step}"
        if release.exists():
            return
        self.store.update_job(self.job_id, message=f"held at step {step} (debug.hold_at_steps) until {release} exists")
        self.usage.charge("overhead")
        while not release.exists() and not self._cancel.wait(0.1):
            pass
        # The workers' energy of the hold comes with their next call: a control point of tests and
        # drills asks them nothing, so that a worker killed in a hold is found by the step after it.
        self.usage.charge("idle")
        self.store.update_job(self.job_id, message=f"released at step {step}")

    def _validate(self, step: int) -> None:
        """The kind's metrics on the held-out set, each sample predicted once by one rank."""
        size = self._held_out
        reports = self._call("validate", size, use="validation", timeout_s=self.config.train.step_timeout_s)
        outputs, skipped = merge_rank_outputs(reports, list(range(size)))
        self._record_skips(skipped, "held_out")
        if len(outputs["sample_ids"]) == 0:
            raise DataError(f"not one of the {size} held-out videos could be decoded")
        results = self.task.validation_metrics({k: v for k, v in outputs.items() if k != "sample_ids"})
        log.info("job %s: validation at step %d: %s", self.job_id, step, results)
        self.store.record_validation(self.job_id, {"step": step, "metrics": results})
        self._export(metrics.VALIDATION_METRIC, results)

    def _export(self, gauge: Gauge, values: dict[str, float]) -> None:
        for name, value in values.items():
            gauge.labels(self.job_id, self.job.kind, name).set(value)
            self._exported.add((gauge, name))

    def _decode_decision(self, data_wait_fraction: float) -> PoolDecision | None:
        """Whether to grow the decode pool while trainers wait for clips, or shrink it when they never do
        (between steps: clips do not depend on which worker decodes them, so no step changes)."""
        if not self._sizer.observe(data_wait_fraction):
            return None
        limit = self._decode_limit(self) if self._decode_limit else self.config.data.max_decode_workers
        return self._sizer.decide(len(self._pool.actors), limit)

    def _resize_decode_pool(self, decision: PoolDecision) -> None:
        self._pool_decision = None
        size = len(self._pool.actors)
        timeout_s = self.config.train.step_timeout_s
        removed = self._pool.resize(decision.size, timeout_s=min(timeout_s, 30.0))
        if len(self._pool.actors) == size:
            return  # no room after all: the workers did not start
        self._call("set_decode_actors", self._pool.actors, use="data_wait", timeout_s=timeout_s)
        kill_actors(removed)  # no trainer sends them work any more
        self.decode_workers = len(self._pool.actors)
        self.metrics_endpoints["decode"] = self._pool.metrics_endpoints
        log.info("job %s: decode pool %d → %d workers: %s", self.job_id, size, self.decode_workers, decision.reason)
        self.store.record_decode_pool(self.job_id, {"from": size, "to": self.decode_workers, "reason": decision.reason,
                                                    "data_wait_fraction": decision.data_wait_fraction})

    def _prune_checkpoints(self) -> None:
        """Keep the newest ``train.keep_checkpoints`` committed checkpoints (a new one is committed
        before an old one goes, so a committed checkpoint to restart from always exists)."""
        keep = self.config.train.keep_checkpoints
        if not keep:
            return
        for old in self.store.checkpoints(self.job_id)[:-keep]:
            self.store.delete_checkpoint(self.job_id, old.step)  # forget it first: never offer a half-deleted one
            shutil.rmtree(old.path, ignore_errors=True)

    def _log_samples(self, step: int, reports: list[dict[str, Any]]) -> None:
        """One line per executed step (a redone step appears again; its last line counts)."""
        line = {"step": step, "world_size": self.world_size, "samples": [i for r in reports for i in r["sample_ids"]]}
        path = self.settings.job_dir(self.job_id) / "samples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log_file:
            log_file.write(json.dumps(line) + "\n")

    def _record_skips(self, skips: list[dict[str, Any]], which: str) -> None:
        """Record the videos skipped in ``which`` list ("data", "held_out"), and fail the job once too
        many of that list are bad."""
        for skip in skips:
            self.store.record_skipped(self.job_id, skip["path"], skip["reason"], skip["detail"])
        self._bad[which].add(skips, self.config.data.max_bad_fraction)

    def _checkpoint(self, step: int) -> str:
        root = self.settings.job_dir(self.job_id) / "checkpoints"
        saved = self._call("save_checkpoint", str(root), step, use="checkpoint",
                           timeout_s=self.config.train.step_timeout_s)
        folder = checkpoint_folder(root, step)
        assert set(saved) == {str(folder)}, f"ranks saved into {saved}"
        commit(folder, {"job_id": self.job_id, "step": step, "world_size": self.world_size,
                        "weights": self._group.infos[0]["weights"]})
        self.store.record_checkpoint(self.job_id, step, str(folder), self.world_size)
        self.usage.kept(step)
        self._checkpointed_step = step
        self._prune_checkpoints()
        self.metrics_endpoints["decode"] = self._pool.refresh_endpoints(self.config.train.step_timeout_s)
        return str(folder)
