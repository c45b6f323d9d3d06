"""Decode pools: CPU actors that turn sample ids into ready clips, and the trainer-side stream
that pulls from them with a bounded number of requests in flight (backpressure).

A decode worker is stateless (every clip is a function of seed, epoch and sample), so Ray restarts
a dead one in place and retries the requests it had in flight: the trainers never notice but for
the wait. A bad video never crashes or stalls a job: the sample is replaced by a deterministic other
one (a function of seed, epoch, sample and attempt, so every process picks the same), and
the skip is reported with its path and reason.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import ray
import torch

from internvideo.data.decode import DecodeError
from internvideo.data.lists import VideoRecord, read_video_list
from internvideo.data.order import GlobalBatchPlan, gradient_accumulation
from internvideo.data.pipeline import PretrainClipSpec, load_pretrain_clip
from workers import telemetry
from workers.calls import gather, kill_actors

MAX_REPLACEMENTS = 16
# A request retried this often has killed its worker every time: it is poison, not bad luck.
MAX_REQUEST_RETRIES = 2

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The data is too broken to train on (a job fails with this message)."""


@dataclass(frozen=True)
class SkippedSample:
    sample_id: int
    path: str
    reason: str
    detail: str


class DecodeWorker:
    """Decodes pretraining clips. Plain class: the Ray actor is ``ray.remote(DecodeWorker)``."""

    def __init__(self, job_id: str, pool: str, list_path: str, root: str | None, spec: PretrainClipSpec,
                 serve_metrics: bool = False, host: str | None = None) -> None:
        torch.set_num_threads(1)  # one decode worker, one core: the pool scales by actors, not threads
        self.records: list[VideoRecord] = read_video_list(list_path, root)
        self.spec = spec
        self._bad: dict[str, DecodeError] = {}  # known-bad paths: fail fast, same outcome
        labels = {"job": job_id, "pool": pool}
        self._clips = telemetry.DECODE_CLIPS.labels(**labels)
        self._frames = telemetry.DECODE_FRAMES.labels(**labels)
        self._seconds = telemetry.DECODE_SECONDS.labels(**labels)
        self._errors = lambda reason: telemetry.DECODE_ERRORS.labels(**labels, reason=reason)
        self.metrics_endpoint = telemetry.serve_metrics(host or telemetry.node_address()) if serve_metrics else ""
        if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
            log.warning("decode worker of job %s restarted; retrying its requests", job_id)

    def info(self) -> dict[str, Any]:
        return {"num_samples": len(self.records), "metrics_endpoint": self.metrics_endpoint}

    def decode_batch(self, epoch: int, sample_ids: list[int]) -> dict[str, Any]:
        """Clips for ``sample_ids``: video uint8 (B, T, S, S, 3), mask bool (B, N), label (B,)."""
        start = time.perf_counter()
        skipped: list[SkippedSample] = []
        clips = [self._decode_one(epoch, int(sid), skipped) for sid in sample_ids]
        self._seconds.inc(time.perf_counter() - start)
        return {
            "video": np.stack([c.video for c in clips]),
            "mask": np.stack([c.mask for c in clips]),
            "label": np.array([c.label for c in clips], dtype=np.int64),
            "sample_ids": [int(sid) for sid in sample_ids],  # as asked for, before any replacement
            "skipped": [asdict(s) for s in skipped],
        }

    def _decode_one(self, epoch: int, sample_id: int, skipped: list[SkippedSample]):
        candidate = sample_id
        for attempt in range(1, MAX_REPLACEMENTS + 1):
            record = self.records[candidate]
            try:
                if record.path in self._bad:
                    raise self._bad[record.path]
                clip = load_pretrain_clip(record, self.spec, epoch, candidate)
            except DecodeError as err:
                if record.path not in self._bad:
                    self._bad[record.path] = err
                    self._errors(err.reason).inc()
                skipped.append(SkippedSample(candidate, record.path, err.reason, str(err)))
                candidate = replacement_sample(self.spec.seed, epoch, sample_id, attempt, len(self.records))
                continue
            self._clips.inc()
            self._frames.inc(clip.video.shape[0])
            return clip
        raise DataError(f"{MAX_REPLACEMENTS} videos in a row could not be decoded while looking for a "
                        f"replacement of sample {sample_id}; last: {skipped[-1].path} ({skipped[-1].reason})")


def replacement_sample(seed: int, epoch: int, sample_id: int, attempt: int, num_samples: int) -> int:
    """The sample that stands in for a bad one: the same in every process and after restarts."""
    return int(np.random.default_rng([seed, epoch, sample_id, attempt]).integers(num_samples))


class DecodePool:
    """A job's decode actors. Built all-or-nothing by ``create``; ``shutdown`` kills them."""

    def __init__(self, actors: list[ray.actor.ActorHandle], endpoints: list[str]) -> None:
        self.actors = actors
        self.metrics_endpoints = endpoints

    @classmethod
    def create(cls, *, job_id: str, size: int, cpus: float, list_path: str, root: str | None,
               spec: PretrainClipSpec, host: str | None, timeout_s: float, restarts: int = 0) -> "DecodePool":
        """``restarts``: how often Ray restarts each actor after it dies, retrying its requests."""
        actor_cls = ray.remote(DecodeWorker)
        options = {"num_cpus": cpus, "max_concurrency": 1, "max_restarts": restarts,
                   "max_task_retries": MAX_REQUEST_RETRIES if restarts else 0}
        actors = [actor_cls.options(**options).remote(job_id, f"{job_id}-decode", list_path, root, spec, True, host)
                  for _ in range(size)]
        try:
            infos = gather([a.info.remote() for a in actors], timeout_s, "decode pool start-up")
        except BaseException:
            kill_actors(actors)
            raise
        return cls(actors, [i["metrics_endpoint"] for i in infos])

    def refresh_endpoints(self, timeout_s: float) -> list[str]:
        """The /metrics endpoints now (a restarted worker serves on a new port)."""
        infos = gather([a.info.remote() for a in self.actors], timeout_s, "decode pool info")
        self.metrics_endpoints = [i["metrics_endpoint"] for i in infos]
        return self.metrics_endpoints

    def shutdown(self) -> None:
        kill_actors(self.actors)
        self.actors = []


class ClipStream:
    """The trainer side of a pool: requests this rank's micro-batches in step order, keeps at most
    ``max_in_flight`` outstanding, and hands them back in order."""

    def __init__(self, actors: list[ray.actor.ActorHandle], plan: GlobalBatchPlan, *, rank: int,
                 world_size: int, micro_batch: int, end_step: int, max_in_flight: int, timeout_s: float) -> None:
        self.actors, self.plan = actors, plan
        self.rank, self.world_size, self.micro_batch = rank, world_size, micro_batch
        self.end_step, self.max_in_flight, self.timeout_s = end_step, max_in_flight, timeout_s
        self.accumulation = gradient_accumulation(plan.global_batch, micro_batch, world_size)
        self._in_flight: collections.deque[tuple[int, int, ray.ObjectRef]] = collections.deque()
        self._schedule: Iterator[tuple[int, int, int, np.ndarray]] = iter(())
        self._requests = 0
        self._next: tuple[int, int] | None = None

    def _micro_batches_from(self, step: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
        for s in range(step, self.end_step):
            for m, ids in enumerate(self.plan.micro_batches(s, self.rank, self.world_size, self.micro_batch)):
                yield s, m, self.plan.epoch_of(s), ids

    def _refill(self) -> None:
        while len(self._in_flight) < self.max_in_flight:
            item = next(self._schedule, None)
            if item is None:
                return
            step, micro, epoch, ids = item
            # Spread ranks over actors so that each actor serves every rank in turn.
            actor = self.actors[(self._requests + self.rank) % len(self.actors)]
            self._requests += 1
            self._in_flight.append((step, micro, actor.decode_batch.remote(epoch, ids.tolist())))

    def get(self, step: int, micro: int) -> dict[str, Any]:
        """The decoded micro-batch ``micro`` of ``step``; seeks (dropping prefetched work) if needed."""
        if self._next != (step, micro):
            self._in_flight.clear()
            self._schedule = self._micro_batches_from(step)
            if micro:
                raise ValueError("a stream can only seek to the start of a step")
        self._refill()
        got_step, got_micro, ref = self._in_flight.popleft()
        assert (got_step, got_micro) == (step, micro), "decode stream out of order"
        batch = ray.get(ref, timeout=self.timeout_s)
        self._refill()
        self._next = (step, micro + 1) if micro + 1 < self.accumulation else (step + 1, 0)
        return batch
