"""Decode pools: CPU actors that turn sample ids into ready clips, and the trainer-side stream
that pulls from them with a bounded number of requests in flight (backpressure).

Inside a decode worker a torchdata.nodes pipeline decodes: requests from every trainer feed one
queue, a thread-parallel mapper decodes ``threads`` of them at a time (decord and the resize
release the GIL), and a collector hands each finished batch back to the call that asked for it.
The thread count, not the number of requests, bounds the CPU a worker uses.

A decode worker is stateless (every clip is a function of seed, epoch and sample), so Ray restarts
a dead one in place and retries the requests it had in flight: the trainers never notice but for
the wait, and the pool can grow or shrink between steps without changing a single clip. A bad video
never crashes or stalls a job: the sample is replaced by a deterministic other one (a function of
seed, epoch, sample and attempt, so every process picks the same), and the skip is reported with
its path and reason.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import ray
import torch
from torchdata.nodes import BaseNode, ParallelMapper

from internvideo.data.allocator import keep_freed_memory
from internvideo.data.decode import DecodeError
from internvideo.data.formats import MergedSource, VideoSource
from internvideo.data.lists import VideoRecord
from internvideo.data.order import GlobalBatchPlan, gradient_accumulation
from internvideo.tasks.base import SampleFn, clips_per_sample, record_index
from workers import telemetry
from workers.calls import WorkerGroupError, gather, kill_actors

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


@dataclass(frozen=True)
class Dataset:
    """What a decode worker reads: the records and the job kind's sample function for them."""

    source: VideoSource | MergedSource
    sample: SampleFn  # the job kind's: what one sample is
    # A video that cannot be decoded is replaced by another sample (training: the batch stays whole),
    # or, held-out data, left out of the batch and reported: a prediction must be the video's own.
    replace_bad: bool = True


class _Request:
    """One ``decode_batch`` call on its way through the pipeline: the batch or the error it ends with."""

    def __init__(self, epoch: int, sample_ids: list[int], held_out: bool) -> None:
        self.epoch, self.sample_ids, self.held_out = epoch, sample_ids, held_out
        self.batch: dict[str, Any] | None = None
        self.error: Exception | None = None
        self.done = threading.Event()


class _Requests(BaseNode):
    """The pipeline's source: requests in arrival order; None ends it."""

    def __init__(self, inbox: queue.Queue) -> None:
        super().__init__()
        self.inbox = inbox

    def next(self) -> _Request:
        request = self.inbox.get()
        if request is None:
            raise StopIteration
        return request

    def get_state(self) -> dict[str, Any]:
        return {}  # nothing to resume: work arrives by request, and requests are retried whole


class DecodeWorker:
    """Runs a job kind's sample function on ``threads`` decode threads, one request (a micro-batch) per thread
    at a time: a trainer keeps several requests in flight, so the threads stay busy, and samples need
    no hand-offs between threads. Plain class (tests and benchmarks use it directly); the Ray actor is
    ``ray.remote(DecodeWorker)`` with concurrent calls."""

    def __init__(self, job_id: str, pool: str, data: Dataset, seed: int, serve_metrics: bool = False,
                 host: str | None = None, threads: int = 1, delay_s: float = 0.0,
                 held_out: Dataset | None = None) -> None:
        """``data``: the training data; ``held_out``: the validation data, decoded for requests that ask
        for it. ``delay_s``: every request takes at least this long (debug.decode_delay_s: slow storage)."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(1)  # parallel across requests, not inside one resize
        keep_freed_memory()  # decoding is what this process is for: frames are reused, not re-mapped
        self.datasets = {False: (data.source.read(), data)}
        if held_out is not None:
            self.datasets[True] = (held_out.source.read(), held_out)
        self.seed, self.delay_s = seed, delay_s
        self._bad: dict[str, DecodeError] = {}  # known-bad paths: fail fast, same outcome
        labels = {"job": job_id, "pool": pool}
        self._clips = telemetry.DECODE_CLIPS.labels(**labels)
        self._frames = telemetry.DECODE_FRAMES.labels(**labels)
        self._seconds = telemetry.DECODE_SECONDS.labels(**labels)
        self._errors = lambda reason: telemetry.DECODE_ERRORS.labels(**labels, reason=reason)
        self.metrics_endpoint = telemetry.serve_metrics(host or telemetry.node_address()) if serve_metrics else ""
        self._inbox: queue.Queue = queue.Queue()
        decoded = ParallelMapper(_Requests(self._inbox), self._decode_request, num_workers=threads,
                                 in_order=False, method="thread")
        self._collector = threading.Thread(target=self._deliver, args=(decoded,), name="decode-collector",
                                           daemon=True)
        self._collector.start()
        if ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed:
            log.warning("decode worker of job %s restarted; retrying its requests", job_id)

    def info(self) -> dict[str, Any]:
        return {"num_samples": len(self.datasets[False][0]), "metrics_endpoint": self.metrics_endpoint}

    def decode_batch(self, epoch: int, sample_ids: list[int], held_out: bool = False) -> dict[str, Any]:
        """The samples ``sample_ids``, each of the sample function's arrays stacked (``video`` uint8
        (B, T, S, S, 3), ...), with ``sample_ids`` and the ``skipped`` videos: replaced on the way, or
        (a dataset that does not replace) left out, when ``sample_ids`` are those in the batch — no
        arrays at all if none could be decoded."""
        if not sample_ids:
            raise ValueError("decode_batch needs at least one sample id")
        if not self._collector.is_alive():
            raise RuntimeError("decode worker is closed")
        if held_out not in self.datasets:
            raise ValueError("this decode worker was given no held-out data")
        request = _Request(epoch, [int(sid) for sid in sample_ids], held_out)
        self._inbox.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.batch

    def close(self) -> None:
        """Stop the pipeline's threads (a Ray actor just dies; tests and benchmarks call this)."""
        self._inbox.put(None)
        self._collector.join()

    def _deliver(self, decoded: ParallelMapper) -> None:
        for request in decoded:
            request.done.set()

    def _decode_request(self, request: _Request) -> _Request:
        """Runs on a decode thread; never raises, so that one request cannot stop the pipeline."""
        start = time.perf_counter()
        time.sleep(self.delay_s)
        try:
            skipped: list[SkippedSample] = []
            records, data = self.datasets[request.held_out]
            decoded = [(sid, arrays) for sid in request.sample_ids
                       if (arrays := self._decode_one(records, data, request.epoch, sid, skipped)) is not None]
            names = decoded[0][1] if decoded else {}
            clips = clips_per_sample(data.sample)
            join = np.stack if clips == 1 else np.concatenate  # several clips a sample: one row each
            request.batch = {
                **{name: join([arrays[name] for _, arrays in decoded]) for name in names},
                # As asked for (a replacement stands in for its sample), one per row.
                "sample_ids": [sid for sid, _ in decoded for _ in range(clips)],
                "skipped": [asdict(skip) for skip in skipped],
            }
        except Exception as err:  # noqa: BLE001 — re-raised in the request's own call
            request.error = err
        self._seconds.inc(time.perf_counter() - start)
        return request

    def _decode_one(self, records: list[VideoRecord], data: Dataset, epoch: int, sample_id: int,
                    skipped: list[SkippedSample]) -> dict[str, np.ndarray] | None:
        candidate = sample_id
        for attempt in range(1, MAX_REPLACEMENTS + 1):
            record = records[record_index(data.sample, candidate)]
            known = self._bad.get(record.path)
            try:
                if known is not None:
                    raise known
                arrays = data.sample(records, epoch, candidate)
            except DecodeError as err:
                # First sighting in this worker (another decode thread may have just met it too): count
                # and log it once; a known-bad path raises its stored error, which must not count again.
                # The bad video may be another the sample needed (a mixing partner): it is the one named.
                if known is None and self._bad.setdefault(err.path, err) is err:
                    self._errors(err.reason).inc()
                    log.warning("skipping video (%s): %s", err.reason, err)
                skipped.append(SkippedSample(candidate, err.path, err.reason, str(err)))
                if not data.replace_bad:
                    return None
                candidate = replacement_sample(self.seed, epoch, sample_id, attempt, len(records))
                continue
            clips = clips_per_sample(data.sample)
            self._clips.inc(clips)
            if "video" in arrays:  # several clips a sample share their frames, decoded once
                self._frames.inc(arrays["video"].shape[0 if clips == 1 else 1])
            return arrays
        raise DataError(f"{MAX_REPLACEMENTS} videos in a row could not be decoded while looking for a "
                        f"replacement of sample {sample_id}; last: {skipped[-1].path} ({skipped[-1].reason})")


def replacement_sample(seed: int, epoch: int, sample_id: int, attempt: int, num_samples: int) -> int:
    """The sample that stands in for a bad one: the same in every process and after restarts."""
    return int(np.random.default_rng([seed, epoch, sample_id, attempt]).integers(num_samples))


@dataclass(frozen=True)
class PoolSpec:
    """What every decode actor of a job is built from."""

    job_id: str
    data: Dataset  # the training data and the job kind's sample function
    seed: int  # the job's: replacements of bad videos are drawn from it
    cpus: float
    threads: int
    host: str | None
    restarts: int = 0  # how often Ray restarts each actor after it dies, retrying its requests
    delay_s: float = 0.0  # debug.decode_delay_s
    held_out: Dataset | None = None  # validation data


class DecodePool:
    """A job's decode actors. ``create`` is all-or-nothing, ``resize`` grows into free CPUs (or keeps
    the size it can reach) and shrinks, ``shutdown`` kills them all."""

    # Concurrent calls per actor: requests only wait in it; the decode threads bound the work.
    MAX_CONCURRENT_REQUESTS = 64

    def __init__(self, pool_spec: PoolSpec, actors: list[ray.actor.ActorHandle], endpoints: list[str]) -> None:
        self.pool_spec = pool_spec
        self.actors = actors
        self.metrics_endpoints = endpoints

    @classmethod
    def create(cls, pool_spec: PoolSpec, size: int, timeout_s: float) -> "DecodePool":
        pool = cls(pool_spec, [], [])
        actors, endpoints = pool._start(size, timeout_s)
        if len(actors) < size:
            kill_actors(actors)
            raise WorkerGroupError(f"decode pool start-up: only {len(actors)} of {size} workers started "
                                   f"within {timeout_s:.0f}s")
        pool.actors, pool.metrics_endpoints = actors, endpoints
        return pool

    def _start(self, count: int, timeout_s: float) -> tuple[list[ray.actor.ActorHandle], list[str]]:
        """Start ``count`` actors; returns those up within ``timeout_s`` (the rest are killed)."""
        p = self.pool_spec
        options = {"num_cpus": p.cpus, "max_concurrency": self.MAX_CONCURRENT_REQUESTS,
                   "max_restarts": p.restarts, "max_task_retries": MAX_REQUEST_RETRIES if p.restarts else 0}
        actor_cls = ray.remote(DecodeWorker).options(**options)
        actors = [actor_cls.remote(p.job_id, f"{p.job_id}-decode", p.data, p.seed, True, p.host, p.threads,
                                   p.delay_s, p.held_out) for _ in range(count)]
        probes = {a.info.remote(): a for a in actors}
        ready, pending = ray.wait(list(probes), num_returns=len(probes), timeout=timeout_s)
        started, endpoints = [], []
        for ref in ready:
            try:
                endpoints.append(ray.get(ref)["metrics_endpoint"])
                started.append(probes[ref])
            except ray.exceptions.RayError as err:
                log.warning("decode worker of job %s failed to start: %s", p.job_id, err)
        kill_actors([a for a in actors if a not in started])
        return started, endpoints

    def resize(self, size: int, timeout_s: float) -> list[ray.actor.ActorHandle]:
        """Grow or shrink to ``size`` actors; returns the actors removed (still alive: the caller kills
        them with ``kill_actors`` once no trainer sends them requests). Grows only by what fits in the CPUs
        Ray has free now: a worker waiting for CPUs would take them from whoever frees them next."""
        if size > len(self.actors):
            fits = int(ray.available_resources().get("CPU", 0.0) / self.pool_spec.cpus + 1e-9)
            actors, endpoints = self._start(min(size - len(self.actors), fits), timeout_s)
            self.actors, self.metrics_endpoints = self.actors + actors, self.metrics_endpoints + endpoints
            return []
        removed = self.actors[size:]
        self.actors, self.metrics_endpoints = self.actors[:size], self.metrics_endpoints[:size]
        return removed

    def refresh_endpoints(self, timeout_s: float) -> list[str]:
        """The /metrics endpoints now (a restarted worker serves on a new port)."""
        infos = gather([a.info.remote() for a in self.actors], timeout_s, "decode pool info")
        self.metrics_endpoints = [i["metrics_endpoint"] for i in infos]
        return self.metrics_endpoints

    def shutdown(self) -> None:
        kill_actors(self.actors)
        self.actors = []


def ordered_batches(actors: list[ray.actor.ActorHandle], chunks: list[list[int]], held_out: bool,
                     max_in_flight: int, timeout_s: float) -> Iterator[dict[str, Any]]:
    """Samples from the decode pool that no training step asks for (held-out data, ``held_out``, or an
    evaluation's list): one request per chunk of sample ids, answered in order, with at most
    ``max_in_flight`` requests outstanding (spread over the actors)."""
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    for index, chunk in enumerate(chunks):
        pending.append(_request(actors[index % len(actors)], 0, chunk, held_out))
        if len(pending) >= max_in_flight:
            yield _decoded(pending.popleft(), timeout_s)
    while pending:
        yield _decoded(pending.popleft(), timeout_s)


def _request(actor: ray.actor.ActorHandle, epoch: int, sample_ids: list[int],
             held_out: bool = False) -> concurrent.futures.Future:
    """Ask ``actor`` for a batch. The answer is a future, not an object ref: Ray's own thread fetches and
    deserialises the batch as soon as it is decoded, so the trainer finds it ready instead of paying a
    ``ray.get`` (a round trip to the raylet: 0.4 ms a micro-batch on a loaded 2-core node) on its step."""
    return actor.decode_batch.remote(epoch, sample_ids, held_out).future()


def _decoded(request: concurrent.futures.Future, timeout_s: float) -> dict[str, Any]:
    """The batch ``request`` answers; a timeout says which setting bounds it (a future's own names none)."""
    try:
        return request.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise ray.exceptions.GetTimeoutError(
            f"a decode request was not answered within {timeout_s:g}s (data.decode_timeout_s)") from None


@dataclass
class _InFlight:
    step: int
    micro: int
    epoch: int
    sample_ids: list[int]
    actor: ray.actor.ActorHandle
    answer: concurrent.futures.Future


class ClipStream(BaseNode[dict]):
    """The trainer side of a pool, as a torchdata node: yields this rank's micro-batches in step order,
    keeps at most ``max_in_flight`` requests outstanding, and resumes exactly from its state
    ``{"step", "micro"}`` (the position of the next micro-batch). A request dropped by ``reset`` or
    ``set_actors`` is still fetched when its answer comes (its future is Ray's until then), then freed:
    at most ``max_in_flight`` batches."""

    def __init__(self, actors: list[ray.actor.ActorHandle], plan: GlobalBatchPlan, *, rank: int,
                 world_size: int, micro_batch: int, end_step: int, max_in_flight: int, timeout_s: float) -> None:
        super().__init__()
        if not actors:
            raise ValueError("a clip stream needs at least one decode actor")
        self.actors, self.plan = list(actors), plan
        self.rank, self.world_size, self.micro_batch = rank, world_size, micro_batch
        self.end_step, self.max_in_flight, self.timeout_s = end_step, max_in_flight, timeout_s
        self.accumulation = gradient_accumulation(plan.global_batch, micro_batch, world_size)
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._schedule: Iterator[tuple[int, int, int, list[int]]] = iter(())
        self._requests = 0
        self._position = (0, 0)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {"step": 0, "micro": 0}
        step, micro = int(state["step"]), int(state["micro"])
        if not (0 <= step and 0 <= micro < self.accumulation):
            raise ValueError(f"bad stream state {state} (accumulation {self.accumulation})")
        self._position = (step, micro)
        self._in_flight.clear()
        self._schedule = self._micro_batches_from(step, micro)

    def get_state(self) -> dict[str, Any]:
        return {"step": self._position[0], "micro": self._position[1]}

    def next(self) -> dict[str, Any]:
        """The next micro-batch, tagged with its ``step`` and ``micro``."""
        self._refill()
        if not self._in_flight:
            raise StopIteration
        request = self._in_flight.popleft()
        batch = _decoded(request.answer, self.timeout_s)
        batch["step"], batch["micro"] = request.step, request.micro
        last = request.micro + 1 == self.accumulation
        self._position = (request.step + 1, 0) if last else (request.step, request.micro + 1)
        self._refill()
        return batch

    def set_actors(self, actors: list[ray.actor.ActorHandle]) -> None:
        """Send future requests to ``actors``; requests outstanding at actors no longer among them are
        sent again (clips are deterministic, so the resent ones are identical)."""
        if not actors:
            raise ValueError("a clip stream needs at least one decode actor")
        self.actors = list(actors)
        kept = set(actors)
        for request in self._in_flight:
            if request.actor not in kept:
                request.actor = self._next_actor()
                request.answer = _request(request.actor, request.epoch, request.sample_ids)

    def _micro_batches_from(self, step: int, micro: int) -> Iterator[tuple[int, int, int, list[int]]]:
        for s in range(step, self.end_step):
            batches = self.plan.micro_batches(s, self.rank, self.world_size, self.micro_batch)
            for m, ids in enumerate(batches):
                if s > step or m >= micro:
                    yield s, m, self.plan.epoch_of(s), ids.tolist()

    def _next_actor(self) -> ray.actor.ActorHandle:
        # Spread ranks over actors so that each actor serves every rank in turn.
        actor = self.actors[(self._requests + self.rank) % len(self.actors)]
        self._requests += 1
        return actor

    def _refill(self) -> None:
        while len(self._in_flight) < self.max_in_flight:
            item = next(self._schedule, None)
            if item is None:
                return
            step, micro, epoch, ids = item
            actor = self._next_actor()
            self._in_flight.append(_InFlight(step, micro, epoch, ids, actor, _request(actor, epoch, ids)))
