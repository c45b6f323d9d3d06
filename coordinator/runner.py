"""JobRunner: owns one job's actors for the job's whole run, and writes what happens to the store.

The runner is the only writer of a running job's record: it takes the job the scheduler
moved to STARTING through RUNNING → SUCCEEDED | FAILED | CANCELLED, drives the worker group one optimizer
step at a time, commits checkpoints, and tears every actor down on the way out.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from coordinator.recovery import Decision, FailurePolicy
from coordinator.state import JobState
from coordinator.store import JobRecord, JobStore
from internvideo.data.lists import read_video_list
from internvideo.tasks.pretrain_mae import PretrainMAEConfig
from workers.calls import PlacementTimeout, WorkerGroupError
from workers.checkpoint import UNIVERSAL, checkpoint_folder, commit, read_commit, to_universal
from workers.decode import DataError, DecodePool
from workers.group import WorkerGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerSettings:
    state_dir: Path
    trainer_bundle: dict[str, float]  # resources of one trainer: {"GPU": 1, "CPU": 1} or {"CPU": 1}
    start_timeout_s: float = 300.0
    # How long a gang waits for its placement group before the job re-fits its size to the cluster
    # (a dead node's resources can look alive until Ray's health checks notice).
    placement_timeout_s: float = 60.0
    worker_host: str | None = None  # where workers listen; None: each one's Ray node address

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id


class JobCancelled(Exception):
    """The user cancelled the job."""


class JobInterrupted(Exception):
    """The coordinator is going away; the job fails with the reason."""


class GrowAt(Exception):
    """More workers fit: stop at this committed checkpoint and restart larger."""

    def __init__(self, checkpoint: Path, world_size: int) -> None:
        super().__init__(f"growing to {world_size} workers at {checkpoint}")
        self.checkpoint, self.world_size = checkpoint, world_size


def resource_demand(config: PretrainMAEConfig, world_size: int, bundle: dict[str, float]) -> dict[str, float]:
    """Everything a job holds while it runs: the trainer gang and its decode pool."""
    demand = {k: v * world_size for k, v in bundle.items()}
    demand["CPU"] = demand.get("CPU", 0.0) + config.data.decode_workers * config.data.decode_cpus
    return demand


@dataclass
class RunStats:
    """What a job did, summed over all its attempts (steps redone after a failure count again)."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    train_seconds: float = 0.0
    failures: int = 0
    start_step: int | None = None
    bad_paths: set[str] = field(default_factory=set)
    last_checkpoint: str = ""

    def result(self, total_steps: int) -> dict[str, Any]:
        # Every step from start_step on ran at least once; any execution beyond that was a redo.
        steps_redone = len(self.losses) - (total_steps - self.start_step)
        return {"first_loss": self.losses[0], "final_loss": self.losses[-1], "start_step": self.start_step,
                "steps": len(self.losses), "samples": self.samples, "train_seconds": self.train_seconds,
                "clips_per_second": self.samples / self.train_seconds, "final_checkpoint": self.last_checkpoint,
                "skipped_videos": len(self.bad_paths), "failures": self.failures, "steps_redone": steps_redone}


class JobRunner(threading.Thread):
    def __init__(self, store: JobStore, job: JobRecord, world_size: int, settings: RunnerSettings,
                 on_exit: Callable[["JobRunner"], None],
                 fit_world_size: Callable[["JobRunner"], int | None] | None = None,
                 grow_target: Callable[["JobRunner"], int] | None = None) -> None:
        """``fit_world_size``: the largest world size this job could have now (None: not even the
        minimum); asked after a failure. Without it a job restarts at the size it had.
        ``grow_target``: the world size the job may grow to now; asked at each checkpoint."""
        super().__init__(name=f"runner-{job.job_id}", daemon=True)
        self.store, self.job, self.settings = store, job, settings
        self.config = PretrainMAEConfig.model_validate(job.config)
        self.world_size = world_size
        self.metrics_endpoints: dict[str, list[str]] = {}  # component → host:port of each /metrics
        self.decode_workers = 0
        self.policy = FailurePolicy(self.config.train.max_failures)
        self.stats = RunStats()
        self._fit_world_size = fit_world_size
        self._grow_target = grow_target
        self._pool: DecodePool | None = None
        self._group: WorkerGroup | None = None
        self._cancel = threading.Event()
        self._interrupt_reason = ""
        self._on_exit = on_exit

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def demand(self) -> dict[str, float]:
        return resource_demand(self.config, self.world_size, self.settings.trainer_bundle)

    def cancel(self) -> None:
        self._cancel.set()

    def interrupt(self, reason: str) -> None:
        self._interrupt_reason = reason
        self._cancel.set()

    def _check_cancel(self) -> None:
        if self._interrupt_reason:
            raise JobInterrupted(self._interrupt_reason)
        if self._cancel.is_set():
            raise JobCancelled()

    def run(self) -> None:
        outcome = (JobState.SUCCEEDED, "")
        try:
            num_samples = len(read_video_list(self.config.data.train_list, self.config.data.root))
            resume = Path(self.config.train.resume_from) if self.config.train.resume_from else None
            while True:
                try:
                    self._attempt(num_samples, resume)
                    break
                except GrowAt as grow:
                    resume = self._grow(grow)
                except PlacementTimeout as err:  # no room at this size (yet): re-fit, not a failure
                    resume = self._recover(err, resume, count_failure=False)
                except WorkerGroupError as err:
                    resume = self._recover(err, resume)
            self.store.record_result(self.job_id, self.stats.result(self.config.train.steps))
        except JobCancelled:
            outcome = (JobState.CANCELLED, "cancelled by request")
        except JobInterrupted as err:
            outcome = (JobState.FAILED, str(err))
        except Exception as err:  # noqa: BLE001 — any failure ends the job, with its reason
            log.exception("job %s failed", self.job_id)
            outcome = (JobState.FAILED, f"{type(err).__name__}: {err}")
        finally:
            # Release everything before the job is seen to end, so that its end means "resources free".
            self._release()
            self._on_exit(self)
            self.store.transition(self.job_id, *outcome, world_size=0)

    def _attempt(self, num_samples: int, resume: Path | None) -> None:
        """Start the decode pool and the worker group, restore ``resume``, train to the end."""
        self._pool = DecodePool.create(job_id=self.job_id, size=self.config.data.decode_workers,
                                       cpus=self.config.data.decode_cpus, list_path=self.config.data.train_list,
                                       root=self.config.data.root, spec=self.config.clip_spec(),
                                       host=self.settings.worker_host, timeout_s=self.settings.start_timeout_s,
                                       restarts=self.config.data.decode_restarts)
        self.decode_workers = len(self._pool.actors)
        folder = self._loadable(resume)
        self._check_cancel()
        self._group = WorkerGroup.create(
            job_id=self.job_id, config=self.job.config, world_size=self.world_size,
            bundle=self.settings.trainer_bundle, num_samples=num_samples, decode_actors=self._pool.actors,
            host=self.settings.worker_host, timeout_s=self.settings.start_timeout_s,
            placement_timeout_s=self.settings.placement_timeout_s,
            load_universal=folder is not None and folder.name == UNIVERSAL)
        self.metrics_endpoints = {"trainer": self._group.metrics_endpoints, "decode": self._pool.metrics_endpoints}
        start_step = self._restore(folder)
        self.store.transition(self.job_id, JobState.RUNNING,
                              f"{self.world_size} workers, {self.decode_workers} decode workers",
                              world_size=self.world_size)
        self._train(start_step, num_samples)

    def _recover(self, error: WorkerGroupError, resume: Path | None, count_failure: bool = True) -> Path | None:
        """Tear down, decide, and wait for room; returns the checkpoint the next attempt starts from."""
        self._release()
        self.stats.failures += count_failure
        if count_failure and self.policy.decide(error, self.stats.failures) is Decision.FAIL:
            raise RuntimeError(f"giving up after failure {self.stats.failures} "
                               f"(train.max_failures={self.policy.max_failures}): {error}") from error
        checkpoints = self.store.checkpoints(self.job_id)
        resume = Path(checkpoints[-1].path) if checkpoints else resume
        what = (f"failure {self.stats.failures} of at most {self.policy.max_failures}" if count_failure
                else "no room for the workers yet")
        message = f"{what}: {error}; restarting from {resume or 'the start'}"
        if self.store.get_job(self.job_id).state is JobState.RECOVERING:
            self.store.update_job(self.job_id, message=message, world_size=0)
        else:
            self.store.transition(self.job_id, JobState.RECOVERING, message, world_size=0)
        self._wait_for_room()
        return resume

    def _grow(self, grow: GrowAt) -> Path:
        self._release()
        self.store.transition(self.job_id, JobState.RESCALING,
                              f"{self.world_size} → {grow.world_size} workers from {grow.checkpoint}", world_size=0)
        self.world_size = grow.world_size
        return grow.checkpoint

    def _wait_for_room(self) -> None:
        while True:
            self._check_cancel()
            world = self._fit_world_size(self) if self._fit_world_size else self.world_size
            if world:
                self.world_size = world
                return
            self.store.update_job(self.job_id, message=f"waiting for at least {self.job.min_workers} workers")
            self._cancel.wait(2.0)

    def _release(self) -> None:
        for part in (self._group, self._pool):
            if part is not None:
                part.shutdown()
        self._group = self._pool = None
        self.metrics_endpoints = {}

    def _loadable(self, folder: Path | None) -> Path | None:
        """``folder`` as this world size can load it: converted to the universal layout when it was
        saved at another world size (the global batch, and with it the data cursor, is the same)."""
        if folder is None:
            return None
        saved_world = read_commit(folder)["world_size"]  # refuses a half-written checkpoint
        return folder if saved_world == self.world_size else to_universal(folder)

    def _restore(self, folder: Path | None) -> int:
        if folder is None:
            step = 0
        else:
            steps = set(self._group.call("load_checkpoint", str(folder), timeout_s=self.settings.start_timeout_s))
            if len(steps) != 1:
                raise RuntimeError(f"ranks restored different steps from {folder}: {sorted(steps)}")
            step = steps.pop()
        if self.stats.start_step is None:
            self.stats.start_step = step
        return step

    def _train(self, start_step: int, num_samples: int) -> None:
        train, stats = self.config.train, self.stats
        for step in range(start_step, train.steps):
            self._check_cancel()
            began = time.perf_counter()
            reports = self._group.call("train_step", step, timeout_s=train.step_timeout_s)
            seconds = time.perf_counter() - began
            step_samples = sum(r["samples"] for r in reports)
            stats.train_seconds += seconds
            stats.samples += step_samples
            stats.losses.append(statistics.fmean(r["loss"] for r in reports))
            self._record_skips(reports, num_samples)
            if train.record_samples:
                self._log_samples(step, reports)
            self.store.record_progress(self.job_id, {
                "step": step + 1, "total_steps": train.steps, "samples": (step + 1) * train.global_batch,
                "epoch": step * train.global_batch // num_samples, "loss": stats.losses[-1],
                "clips_per_second": step_samples / seconds, "step_seconds": seconds,
                "data_wait_fraction": statistics.fmean(r["data_wait_seconds"] / r["seconds"] for r in reports),
                "lr": reports[0]["lr"], "world_size": self.world_size,
            })
            completed = step + 1
            if completed == train.steps or (train.checkpoint_every and completed % train.checkpoint_every == 0):
                stats.last_checkpoint = self._checkpoint(completed)
                target = self._grow_target(self) if self._grow_target and completed < train.steps else 0
                if target > self.world_size:
                    raise GrowAt(Path(stats.last_checkpoint), target)

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

    def _record_skips(self, reports: list[dict[str, Any]], num_samples: int) -> None:
        bad_paths = self.stats.bad_paths
        for report in reports:
            for skip in report["skipped"]:
                self.store.record_skipped(self.job_id, skip["path"], skip["reason"], skip["detail"])
                bad_paths.add(skip["path"])
        limit = self.config.data.max_bad_fraction
        if len(bad_paths) > limit * num_samples:
            raise DataError(f"{len(bad_paths)} of {num_samples} videos could not be decoded, more than "
                            f"data.max_bad_fraction={limit}; see the job's skipped videos")

    def _checkpoint(self, step: int) -> str:
        root = self.settings.job_dir(self.job_id) / "checkpoints"
        saved = self._group.call("save_checkpoint", str(root), step, timeout_s=self.config.train.step_timeout_s)
        folder = checkpoint_folder(root, step)
        assert set(saved) == {str(folder)}, f"ranks saved into {saved}"
        commit(folder, {"job_id": self.job_id, "step": step, "world_size": self.world_size})
        self.store.record_checkpoint(self.job_id, step, str(folder), self.world_size)
        self._prune_checkpoints()
        self.metrics_endpoints["decode"] = self._pool.refresh_endpoints(self.config.train.step_timeout_s)
        return str(folder)
