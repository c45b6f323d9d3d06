"""JobRunner: owns one job's actors for the job's whole run, and writes what happens to the store.

The runner is the only writer of a running job's record: it takes the job the scheduler
moved to STARTING through RUNNING → SUCCEEDED | FAILED | CANCELLED, drives the worker group one optimizer
step at a time, commits checkpoints, and tears every actor down on the way out.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from coordinator.state import JobState
from coordinator.store import JobRecord, JobStore
from internvideo.data.lists import read_video_list
from internvideo.tasks.pretrain_mae import PretrainMAEConfig
from workers.checkpoint import UNIVERSAL, checkpoint_folder, commit, read_commit, to_universal
from workers.decode import DataError, DecodePool
from workers.group import WorkerGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerSettings:
    state_dir: Path
    trainer_bundle: dict[str, float]  # resources of one trainer: {"GPU": 1, "CPU": 1} or {"CPU": 1}
    start_timeout_s: float = 300.0
    worker_host: str | None = None  # where workers listen; None: each one's Ray node address

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id


class JobCancelled(Exception):
    """The user cancelled the job."""


class JobInterrupted(Exception):
    """The coordinator is going away; the job fails with the reason."""


def resource_demand(config: PretrainMAEConfig, world_size: int, bundle: dict[str, float]) -> dict[str, float]:
    """Everything a job holds while it runs: the trainer gang and its decode pool."""
    demand = {k: v * world_size for k, v in bundle.items()}
    demand["CPU"] = demand.get("CPU", 0.0) + config.data.decode_workers * config.data.decode_cpus
    return demand


class JobRunner(threading.Thread):
    def __init__(self, store: JobStore, job: JobRecord, world_size: int, settings: RunnerSettings,
                 on_exit: Callable[["JobRunner"], None]) -> None:
        super().__init__(name=f"runner-{job.job_id}", daemon=True)
        self.store, self.job, self.world_size, self.settings = store, job, world_size, settings
        self.config = PretrainMAEConfig.model_validate(job.config)
        self.demand = resource_demand(self.config, world_size, settings.trainer_bundle)
        self.metrics_endpoints: dict[str, list[str]] = {}  # component → host:port of each /metrics
        self.decode_workers = 0
        self._cancel = threading.Event()
        self._interrupt_reason = ""
        self._on_exit = on_exit

    @property
    def job_id(self) -> str:
        return self.job.job_id

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
        pool: DecodePool | None = None
        group: WorkerGroup | None = None
        outcome = (JobState.SUCCEEDED, "")
        try:
            num_samples = len(read_video_list(self.config.data.train_list, self.config.data.root))
            pool = DecodePool.create(job_id=self.job_id, size=self.config.data.decode_workers,
                                     cpus=self.config.data.decode_cpus, list_path=self.config.data.train_list,
                                     root=self.config.data.root, spec=self.config.clip_spec(),
                                     host=self.settings.worker_host, timeout_s=self.settings.start_timeout_s)
            self.decode_workers = len(pool.actors)
            resume_from = self._checkpoint_to_load()
            self._check_cancel()
            group = WorkerGroup.create(job_id=self.job_id, config=self.job.config, world_size=self.world_size,
                                       bundle=self.settings.trainer_bundle, num_samples=num_samples,
                                       decode_actors=pool.actors, host=self.settings.worker_host,
                                       timeout_s=self.settings.start_timeout_s,
                                       load_universal=resume_from is not None and resume_from.name == UNIVERSAL)
            self.metrics_endpoints = {"trainer": group.metrics_endpoints, "decode": pool.metrics_endpoints}
            start_step = self._resume(group, resume_from)
            self.store.transition(self.job_id, JobState.RUNNING,
                                  f"{self.world_size} workers, {self.decode_workers} decode workers")
            self.store.record_result(self.job_id, self._train(group, start_step, num_samples))
        except JobCancelled:
            outcome = (JobState.CANCELLED, "cancelled by request")
        except JobInterrupted as err:
            outcome = (JobState.FAILED, str(err))
        except Exception as err:  # noqa: BLE001 — any failure ends the job, with its reason
            log.exception("job %s failed", self.job_id)
            outcome = (JobState.FAILED, f"{type(err).__name__}: {err}")
        finally:
            # Release everything before the job is seen to end, so that its end means "resources free".
            for part in (group, pool):
                if part is not None:
                    part.shutdown()
            self._on_exit(self)
            self.store.transition(self.job_id, *outcome, world_size=0)

    def _checkpoint_to_load(self) -> Path | None:
        """The committed checkpoint to start from, in the universal layout when it was saved at
        another world size (the global batch, and with it the data cursor, is the same)."""
        if not self.config.train.resume_from:
            return None
        folder = Path(self.config.train.resume_from)
        saved_world = read_commit(folder)["world_size"]  # refuses a half-written checkpoint
        return folder if saved_world == self.world_size else to_universal(folder)

    def _resume(self, group: WorkerGroup, folder: Path | None) -> int:
        if folder is None:
            return 0
        steps = set(group.call("load_checkpoint", str(folder), timeout_s=self.settings.start_timeout_s))
        if len(steps) != 1:
            raise RuntimeError(f"ranks restored different steps from {folder}: {sorted(steps)}")
        return steps.pop()

    def _train(self, group: WorkerGroup, start_step: int, num_samples: int) -> dict[str, Any]:
        train = self.config.train
        losses: list[float] = []
        samples, wall = 0, 0.0
        bad_paths: set[str] = set()
        last_checkpoint = ""
        for step in range(start_step, train.steps):
            self._check_cancel()
            began = time.perf_counter()
            reports = group.call("train_step", step, timeout_s=train.step_timeout_s)
            seconds = time.perf_counter() - began
            wall += seconds
            step_samples = sum(r["samples"] for r in reports)
            samples += step_samples
            losses.append(statistics.fmean(r["loss"] for r in reports))
            self._record_skips(reports, bad_paths, num_samples)
            self.store.record_progress(self.job_id, {
                "step": step + 1, "total_steps": train.steps, "samples": (step + 1) * train.global_batch,
                "epoch": step * train.global_batch // num_samples, "loss": losses[-1],
                "clips_per_second": step_samples / seconds, "step_seconds": seconds,
                "data_wait_fraction": statistics.fmean(r["data_wait_seconds"] / r["seconds"] for r in reports),
                "lr": reports[0]["lr"],
            })
            completed = step + 1
            if completed == train.steps or (train.checkpoint_every and completed % train.checkpoint_every == 0):
                last_checkpoint = self._checkpoint(group, completed)
        return {"first_loss": losses[0], "final_loss": losses[-1], "start_step": start_step,
                "steps": len(losses), "samples": samples, "train_seconds": wall,
                "clips_per_second": samples / wall, "final_checkpoint": last_checkpoint,
                "skipped_videos": len(bad_paths)}

    def _record_skips(self, reports: list[dict[str, Any]], bad_paths: set[str], num_samples: int) -> None:
        for report in reports:
            for skip in report["skipped"]:
                self.store.record_skipped(self.job_id, skip["path"], skip["reason"], skip["detail"])
                bad_paths.add(skip["path"])
        limit = self.config.data.max_bad_fraction
        if len(bad_paths) > limit * num_samples:
            raise DataError(f"{len(bad_paths)} of {num_samples} videos could not be decoded, more than "
                            f"data.max_bad_fraction={limit}; see the job's skipped videos")

    def _checkpoint(self, group: WorkerGroup, step: int) -> str:
        root = self.settings.job_dir(self.job_id) / "checkpoints"
        folders = set(group.call("save_checkpoint", str(root), step, timeout_s=self.config.train.step_timeout_s))
        folder = checkpoint_folder(root, step)
        assert folders == {str(folder)}, f"ranks saved into {folders}"
        commit(folder, {"job_id": self.job_id, "step": step, "world_size": group.world_size})
        self.store.record_checkpoint(self.job_id, step, str(folder), group.world_size)
        return str(folder)
