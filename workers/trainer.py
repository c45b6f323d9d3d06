"""EncoderWorker: one device, one DeepSpeed engine, one job kind's model.

A plain class (testable without Ray); the worker group runs it as ``ray.remote(EncoderWorker)``.
The job runner drives it one step at a time; the worker pulls its micro-batches from the
decode pool through a ClipStream (a torchdata node), so decoding overlaps compute, and saves the
stream's state with each checkpoint so that a restored job reads exactly the clips it would have.
What the model is, what a sample holds and how a step computes its loss is the kind's
(``internvideo.tasks``), loaded from the ``TaskRef`` the worker is given.
"""
from __future__ import annotations

import collections
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from internvideo.data.order import GlobalBatchPlan, micro_batch_seed
from internvideo.models.layers import set_activation_checkpointing
from internvideo.tasks import TaskRef
from internvideo.tasks.base import clips_per_sample
from workers import engine as ds
from workers import telemetry
from workers.checkpoint import checkpoint_folder
from workers.decode import ClipStream, ordered_batches
from workers.energy import EnergyMeter, cpu_worker_meter, gpu_meter
from workers.peak_flops import device_peak


class EncoderWorker:
    def __init__(self, job_id: str, task: TaskRef, rank: int, world_size: int,
                 serve_metrics: bool = False, host: str | None = None) -> None:
        """``host``: where this worker's servers listen (metrics, rendezvous); None: its Ray node address."""
        self.job_id, self.rank, self.world_size = job_id, rank, world_size
        self.host = host or telemetry.node_address()
        self.task = task.load()
        self.config = self.task.config
        labels = {"job": job_id, "kind": self.task.kind, "encoder": self.task.encoder, "rank": str(rank)}
        self._labels = labels
        self._meter = self._energy_meter()
        self._joules_read: dict[tuple[str, str, str], float] = {}
        self._samples = telemetry.TRAIN_SAMPLES.labels(**labels)
        self._steps = telemetry.TRAIN_STEPS.labels(**labels)
        self._step_seconds = telemetry.TRAIN_STEP_SECONDS.labels(**labels)
        self._data_wait = telemetry.TRAIN_DATA_WAIT.labels(**labels)
        self._flops = telemetry.TRAIN_MODEL_FLOPS.labels(**labels)
        self.metrics_endpoint = telemetry.serve_metrics(self.host) if serve_metrics else ""
        self.engine = None
        self._stops: dict[int, int] = {}  # chunk → the step it stops at: set from another thread while it runs

    def _energy_meter(self) -> EnergyMeter:
        declared = self.config.telemetry.declared_watts
        if torch.cuda.is_available():  # Ray gives the actor its GPU through CUDA_VISIBLE_DEVICES
            return gpu_meter(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0], declared)
        return cpu_worker_meter(_threads(), declared)

    def joules_since_last_read(self) -> float:
        """Energy of this worker's device since the previous read (exported as it is read)."""
        total = 0.0
        for reading in self._meter.read():
            key = (reading.device, reading.index, reading.source)
            # A counter that went back (NVML's, after a driver reload) starts again from its new value.
            delta = max(0.0, reading.joules - self._joules_read.get(key, 0.0))
            self._joules_read[key] = reading.joules
            telemetry.ENERGY.labels(**self._labels, device=reading.device, source=reading.source).inc(delta)
            total += delta
        return total

    def metered(self, method: str, *args: Any) -> tuple[Any, float]:
        """Run ``method`` and return its result with the joules used since the previous read: every
        call of the job runner comes through here, so all of a worker's energy is charged to a use."""
        result = getattr(self, method)(*args)
        return result, self.joules_since_last_read()

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0 picks the address every rank joins (a free port on its own node)."""
        with socket.socket() as sock:
            sock.bind((self.host, 0))
            return self.host, sock.getsockname()[1]

    def setup(self, *, master_addr: str, master_port: int, num_samples: int, decode_actors: list,
              timeout_s: float, load_universal: bool = False) -> dict[str, Any]:
        """Join the process group, build the model: for training, in a DeepSpeed engine with the clip
        stream that feeds it; for evaluation, alone, in inference mode (no optimizer, no ZeRO).
        ``load_universal``: the engine will be restored from a universal checkpoint (saved at another
        world size, ZeRO stage or precision)."""
        torch.set_num_threads(_threads())
        backend = ds.init_process_group(master_addr=master_addr, master_port=master_port, rank=self.rank,
                                        world_size=self.world_size, timeout_s=timeout_s)
        self.device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
        # Evaluation keeps the device's default for inference (bf16 weights on a GPU that has bf16): with
        # no optimizer state, there is nothing for fp32 weights to keep exact.
        if self.config.evaluates:
            precision = ds.resolve_precision("auto", on_gpu=backend == "nccl")
        else:
            precision = ds.resolve_precision(self.config.train.precision, on_gpu=backend == "nccl",
                                             zero_stage=self.config.train.zero_stage)
        self.dtype = precision.weights
        model = self.task.build_model()
        self.flops_per_clip = self.task.flops_per_sample(model)
        if self.config.evaluates:
            self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
            self.decode_actors = list(decode_actors)
        else:
            self._build_engine(model, num_samples, decode_actors, precision, load_universal)
        device_name = torch.cuda.get_device_name(self.device) if backend == "nccl" else platform.processor() or "cpu"
        peak = device_peak(device_name, precision.compute, self.config.telemetry.peak_flops)
        if peak.flops is not None:
            telemetry.PEAK_FLOPS.labels(**self._labels).set(peak.flops)
        return {"backend": backend, "device": str(self.device),
                "parameters": sum(p.numel() for p in model.parameters()),
                "flops_per_clip": self.flops_per_clip, "metrics_endpoint": self.metrics_endpoint,
                "weights": str(self.dtype),
                "device_name": device_name, "peak_flops": peak.flops, "peak": peak.label,
                "energy_sources": sorted({r.source for r in self._meter.read()}),
                "energy_joules": self.joules_since_last_read()}

    def _build_engine(self, model: torch.nn.Module, num_samples: int, decode_actors: list,
                      precision: ds.Precision, load_universal: bool) -> None:
        train = self.config.train
        if train.activation_checkpointing and not set_activation_checkpointing(model, True):
            raise ValueError(f"train.activation_checkpointing: {self.task.kind}'s model has no block stack to checkpoint")
        self.engine = ds.build_job_engine(model, self.task.param_groups(model), train, world_size=self.world_size,
                                          precision=precision, load_universal=load_universal)
        self.accumulation = self.engine.gradient_accumulation_steps()
        clips = clips_per_sample(self.task.sample_fn())  # the plan and the stream count samples, not clips
        self.plan = GlobalBatchPlan(num_samples, train.global_batch // clips, train.seed)
        self.stream = ClipStream(decode_actors, self.plan, rank=self.rank, world_size=self.world_size,
                                 micro_batch=train.micro_batch // clips, end_step=train.steps,
                                 max_in_flight=self.config.data.max_in_flight,
                                 timeout_s=self.config.data.decode_timeout_s)

    def train_step(self, step: int) -> dict[str, Any]:
        """Run optimizer step ``step`` (0-based) over this rank's share of the global batch."""
        start = time.perf_counter()
        if self.stream.state_dict() != {"step": step, "micro": 0}:
            self.stream.reset({"step": step, "micro": 0})  # a redone or skipped-to step: seek
        feed = _StepFeed(self.stream, step, self.accumulation, first_micro=self.rank * self.accumulation,
                         seed=self.config.train.seed, device=self.device)
        batches = (self.task.to_tensors(batch, self.device, self.dtype) for batch in feed)
        metrics = self.task.train_step(self.engine, batches)
        if feed.micro != self.accumulation:
            raise RuntimeError(f"{self.task.kind}'s train_step used {feed.micro} of {self.accumulation} micro-batches")
        self.task.after_step(self.engine.module)
        metrics["lr"] = self.engine.get_lr()[0]
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:  # the norm of the global batch's mean gradient, before clipping
            metrics["grad_norm"] = float(grad_norm)
        seconds = time.perf_counter() - start
        self._samples.inc(feed.samples)
        self._steps.inc()
        self._step_seconds.observe(seconds)
        self._data_wait.inc(feed.waited)
        self._flops.inc(feed.samples * self.flops_per_clip)
        return {"step": step, "metrics": metrics, "samples": feed.samples, "seconds": seconds,
                "model_flops": feed.samples * self.flops_per_clip,
                "data_wait_seconds": feed.waited, "skipped": feed.skipped, "sample_ids": feed.sample_ids}

    def train_steps(self, start: int, end: int) -> Iterator[tuple[dict[str, Any], float]]:
        """Steps ``start`` to ``end - 1``, each step's report streamed back with the joules used since
        the previous one as soon as it completes (a Ray streaming generator: one call for many steps,
        and the runner's bookkeeping of a step overlaps the next). ``stop(start, before)`` ends it at
        step ``before``; the ranks agree on the stop in an all-reduce, so none is left in a collective
        even if the stop reached one late."""
        for step in range(start, end):
            if self._stop_agreed(start, step):
                return
            yield self.train_step(step), self.joules_since_last_read()

    def stop(self, chunk: int, before: int) -> None:
        """End ``train_steps(chunk, ...)`` at step ``before`` or, if it is past that, at its next step.
        Kept by chunk (a chunk's first step: no two chunks of a worker share one): a stop may arrive
        after its chunk ended on its own, or, a threaded actor's calls being unordered, before it began."""
        self._stops[chunk] = before

    def _stop_agreed(self, chunk: int, step: int) -> bool:
        stop = chunk in self._stops and step >= self._stops[chunk]
        if self.world_size == 1:
            return stop
        flag = torch.tensor([float(stop)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def validate(self, num_samples: int) -> dict[str, Any]:
        """The kind's per-sample outputs for this rank's share of the held-out set (samples ``rank``,
        ``rank + world``, ...: each exactly once over the ranks), in eval mode."""
        ids = list(range(self.rank, num_samples, self.world_size))
        micro = self.config.train.micro_batch
        self.engine.eval()
        try:
            return self._predict(self.engine, [ids[i:i + micro] for i in range(0, len(ids), micro)], held_out=True)
        finally:
            self.engine.train()

    def evaluate(self, sample_ids: list[int]) -> dict[str, Any]:
        """An evaluation's shard ``sample_ids``: cut into micro-batches of ``eval.micro_batch``, dealt to
        the ranks in turn (this rank takes micro-batches ``rank``, ``rank + world``, ...), so that each
        micro-batch, and with it every prediction, is the same at any world size."""
        micro = self.config.eval.micro_batch
        chunks = [sample_ids[i:i + micro] for i in range(0, len(sample_ids), micro)]
        report = self._predict(self.model, chunks[self.rank::self.world_size], held_out=False)
        self._samples.inc(report["samples"])
        self._data_wait.inc(report["data_wait_seconds"])
        self._flops.inc(report["model_flops"])
        return report

    def _predict(self, model: Any, chunks: list[list[int]], held_out: bool) -> dict[str, Any]:
        """The kind's outputs for the samples of ``chunks`` (one micro-batch each), decoded by the pool:
        ``outputs`` (rows in the order decoded, ``sample_ids`` among them), the videos ``skipped``, and
        the time it took and waited for clips."""
        start = time.perf_counter()
        parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        skipped: list[dict[str, Any]] = []
        waited, samples = 0.0, 0
        data = self.config.data
        actors = self.stream.actors if held_out else self.decode_actors
        batches = ordered_batches(actors, chunks, held_out, data.max_in_flight, data.decode_timeout_s)
        # The training engine's model keeps training afterwards: inference-mode tensors (ZeRO-3's gathered
        # weights, say) must not outlive this pass, so held-out data runs under no_grad only.
        with torch.no_grad() if held_out else torch.inference_mode():
            while True:
                before = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - before
                if batch is None:
                    break
                skipped += batch["skipped"]
                if not batch["sample_ids"]:
                    continue  # not one of its videos could be decoded
                predictions = self.task.predict(model, self.task.to_tensors(batch, self.device, self.dtype))
                for name, value in predictions.items():
                    parts[name].append(value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy())
                parts["sample_ids"].append(np.asarray(batch["sample_ids"], dtype=np.int64))
                samples += len(batch["sample_ids"])
        seconds = time.perf_counter() - start
        return {"outputs": {name: np.concatenate(values) for name, values in parts.items()}, "skipped": skipped,
                "samples": samples, "seconds": seconds, "data_wait_seconds": waited,
                "model_flops": samples * self.flops_per_clip}

    def save_checkpoint(self, root: str, step: int) -> str:
        """``step`` = optimizer steps completed; every rank must call this."""
        folder = checkpoint_folder(root, step)
        ds.save_checkpoint(self.engine, folder, {"step": step, "world_size": self.world_size,
                                                 "global_batch": self.config.train.global_batch,
                                                 "data": self.stream.state_dict(),
                                                 "task": self.task.state_dict()})
        return str(folder)

    def load_checkpoint(self, folder: str) -> int:
        """Restore model, optimizer and schedule; returns the steps completed."""
        state = ds.load_checkpoint(self.engine, Path(folder))
        if state.get("global_batch") != self.config.train.global_batch:
            raise ValueError(f"{folder} was trained with global batch {state.get('global_batch')}, "
                             f"this job uses {self.config.train.global_batch}")
        self.stream.reset(state["data"])
        self.task.load_state_dict(state.get("task", {}))
        return int(state["step"])

    def set_decode_actors(self, actors: list) -> None:
        """The decode pool was resized: pull from ``actors`` from now on."""
        self.stream.set_actors(actors)

    def parameters_digest(self) -> list[float]:
        """A cheap fingerprint of the weights, for tests that compare runs."""
        return [p.detach().float().sum().item() for p in self.engine.module.parameters()]

    def shutdown(self) -> None:
        ds.destroy_process_group()


def _threads() -> int:
    """The CPU threads this worker may use: OMP_NUM_THREADS (Ray sets it to the actor's CPUs), else
    the CPUs it may run on."""
    return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "0") or 0)) or len(os.sched_getaffinity(0)))


class _StepFeed:
    """This rank's micro-batches of one step, as the kind's ``train_step`` consumes them; counts the
    time spent waiting for them, the samples, and the videos the decode workers had to replace."""

    def __init__(self, stream: ClipStream, step: int, accumulation: int, *, first_micro: int, seed: int,
                 device: torch.device) -> None:
        """``first_micro``: the index of this rank's first micro-batch in the global batch."""
        self.stream, self.step, self.accumulation = stream, step, accumulation
        self.first_micro, self.seed, self.device = first_micro, seed, device
        self.micro, self.samples, self.waited = 0, 0, 0.0
        self.skipped: list[dict[str, Any]] = []
        self.sample_ids: list[int] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.micro < self.accumulation:
            before = time.perf_counter()
            batch = next(self.stream)
            self.waited += time.perf_counter() - before
            assert (batch["step"], batch["micro"]) == (self.step, self.micro), "clip stream out of order"
            self.micro += 1
            self.samples += len(batch["sample_ids"])
            self.skipped += batch["skipped"]
            self.sample_ids += batch["sample_ids"]
            # Dropout and drop path draw from the global generator: seed it per micro-batch of the global
            # batch, so that a sample's draws are the same at any world size.
            _seed_generators(self.device, micro_batch_seed(self.seed, self.step, self.first_micro + self.micro - 1))
            yield batch


def _seed_generators(device: torch.device, seed: int) -> None:
    """Seed the CPU's generator and ``device``'s: what ``torch.manual_seed`` does for the generators a
    worker draws from, without seeding every other backend (a CPU-only torch queues a CUDA seeding with a
    formatted stack trace at each call: 0.1–0.3 ms, four times a step)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device: a worker sees only its own
