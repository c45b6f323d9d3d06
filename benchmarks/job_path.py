"""The whole job path against a plain loop: a pretraining job through the coordinator, Ray, the
DeepSpeed engine and the decode pool, against a single-process loop over the same clips decoded
beforehand — plain torch (fused AdamW), and our engine alone — with the same model, batch, micro-batches
and CPU threads, in one run.

From the job's own events: its step cycle (between consecutive progress events: the workers' step plus
everything the coordinator does around it), the runner's call time, and the workers' own time in the
step; their differences are the orchestration cost of a step (the Ray round trip and the
coordinator's work between steps, store writes among them).

``--peer TREE``: also run the job on a coordinator of another checkout (a git worktree of an earlier
commit), in the same run.

    python -m benchmarks.job_path --peer /tmp/peer --out benchmarks/results/cpu_job_path.json
"""
from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from benchmarks import record
from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from coordinator.submission import validate_submission
from internvideo.data.formats import VideoSource
from internvideo.data.order import GlobalBatchPlan
from internvideo.data.synthetic import write_synthetic_dataset
from internvideo.tasks import TaskRef
from protos.internvideo.v1 import jobs_pb2 as pb
from workers import engine as ds
from workers.decode import Dataset, DecodeWorker


class PlainEngine:
    """What the engine does with a micro-batch's loss at world size 1, in plain torch: divide by the
    accumulation, accumulate, and step a fused AdamW at the last micro-batch."""

    def __init__(self, module: torch.nn.Module, groups: list[dict], lr: float, accumulation: int) -> None:
        self.module, self.accumulation, self.micro = module, accumulation, 0
        self.optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.accumulation == 0:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def decoded_steps(task, list_path: Path, steps: int) -> list[list[dict]]:
    """Every micro-batch of the plan's first ``steps`` steps at world size 1, decoded by the job's own
    sample function in this process, beforehand."""
    train = task.config.train
    worker = DecodeWorker("bench", "bench", Dataset(VideoSource("list", str(list_path)), task.sample_fn()),
                          train.seed)
    plan = GlobalBatchPlan(len(VideoSource("list", str(list_path)).read()), train.global_batch, train.seed)
    try:
        return [[worker.decode_batch(plan.epoch_of(step), ids.tolist())
                 for ids in plan.micro_batches(step, 0, 1, train.micro_batch)] for step in range(steps)]
    finally:
        worker.close()


def loop_step_seconds(task, engine, steps: list[list[dict]], warmup: int) -> list[float]:
    times = []
    for micro_batches in steps:
        began = time.perf_counter()
        task.train_step(engine, (task.to_tensors(b, torch.device("cpu")) for b in micro_batches))
        times.append(time.perf_counter() - began)
    return times[warmup:]


def plain(task, steps, warmup) -> list[float]:
    model = task.build_model()
    train = task.config.train
    engine = PlainEngine(model, task.param_groups(model), train.lr, train.global_batch // train.micro_batch)
    return loop_step_seconds(task, engine, steps, warmup)


def engine_alone(task, steps, warmup) -> list[float]:
    if not dist.is_initialized():
        ds.init_process_group(master_addr="127.0.0.1", master_port=29537, rank=0, world_size=1, timeout_s=120)
    model, train = task.build_model(), task.config.train
    engine = ds.build_job_engine(model, task.param_groups(model), train, world_size=1,
                                 precision=ds.resolve_precision(train.precision, on_gpu=False))
    return loop_step_seconds(task, engine, steps, warmup)


def job(root: Path, name: str, list_path: Path, overrides: list[str], warmup: int,
        code: Path | None = None) -> dict[str, Any]:
    """The job on a coordinator of its own (of ``code``'s checkout if given), with a fresh state folder
    under ``root``: its steps from its events."""
    state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    env = {"PYTHONPATH": str(code)} if code else {}
    process, endpoints = launch_coordinator(state, state.with_suffix(".log"), "--num-cpus", "2", env=env,
                                            cwd=str(code) if code else None)
    try:
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            submitted = client.submit("pretrain-mae", read_config("tiny-cpu"),
                                      [f"data.train_list={list_path}", *overrides], min_workers=1, max_workers=1)
            events = list(client.watch(submitted.job_id))
            final = client.get(submitted.job_id)
    finally:
        process.terminate()
        process.wait(60)
    if final.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"the job ended {pb.JobState.Name(final.state)}: {final.message}")
    progress = [e for e in events if e.WhichOneof("body") == "progress"]
    times = [e.time.ToNanoseconds() / 1e9 for e in progress]
    cycles = [b - a for a, b in zip(times, times[1:])][warmup:]
    calls = [e.progress.step_seconds for e in progress][warmup + 1:]
    work = [e.progress.worker_seconds for e in progress][warmup + 1:]
    if not any(work):
        raise RuntimeError("the job's progress has no worker_seconds (a coordinator older than 4068e1d)")
    return {"cycle": cycles, "call": calls, "worker": work,
            "data_wait_fraction": statistics.fmean(e.progress.data_wait_fraction for e in progress[warmup + 1:])}


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="every variant this many times, in turns")
    parser.add_argument("--peer", type=Path, help="a checkout whose coordinator and workers run the job too")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    overrides = [f"train.steps={args.steps}", "train.checkpoint_every=0", "data.decode_workers=1"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(root / "data", num_videos=64, num_frames=24, size=64, seed=0)
        spec = validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                                   overrides=[f"data.train_list={data.train_list}", *overrides],
                                   min_workers=1, max_workers=1)
        task = TaskRef.of("pretrain-mae", spec.config).load()
        torch.set_num_threads(1)  # what a trainer of one CPU gets from Ray
        steps = decoded_steps(task, data.train_list, args.steps)
        jobs = ([("peer", args.peer)] if args.peer else []) + [("ours", None)]
        runs: dict[str, Callable[[], Any]] = {
            "plain": lambda: plain(task, steps, args.warmup),
            "engine": lambda: engine_alone(task, steps, args.warmup),
            **{f"job {name}": functools.partial(job, root, name, data.train_list, overrides, args.warmup, code)
               for name, code in jobs}}
        ran = record.in_turns(runs, args.rounds)

    loops = {name: [median_ms(times) for times in ran[name]] for name in ("plain", "engine")}
    plain_ms, engine_ms = statistics.median(loops["plain"]), statistics.median(loops["engine"])
    record.save({
        "config": {"kind": "pretrain-mae", "preset": "tiny-cpu", "overrides": overrides, "world_size": 1,
                   "trainer_threads": 1, "timed_steps": args.steps - args.warmup, "rounds": args.rounds},
        "machine": record.machine(),
        "peer": str(args.peer or ""),
        "loop_step_ms": {"plain": plain_ms, "engine": engine_ms},
        "loop_step_ms_per_round": loops,
        "jobs": {name: job_figures(ran[f"job {name}"], plain_ms, engine_ms) for name, _ in jobs},
    }, args.out or Path("/dev/null"))
    return 0


def job_figures(rounds: list[dict[str, Any]], plain_ms: float, engine_ms: float) -> dict[str, Any]:
    """A job's step (the median round's) against the loops', and what its orchestration costs a step."""
    per_round = [{"cycle": median_ms(r["cycle"]), "call": median_ms(r["call"]), "worker": median_ms(r["worker"]),
                  "data_wait_fraction": r["data_wait_fraction"]} for r in rounds]
    median = record.middle_round(per_round, "cycle")
    return {"step_ms": {k: median[k] for k in ("cycle", "call", "worker")},
            "cycle_ms_per_round": [r["cycle"] for r in per_round],
            "over_plain_loop": plain_ms / median["cycle"], "over_engine_loop": engine_ms / median["cycle"],
            # The time between two steps' reports that the workers did not spend in a step.
            "orchestration_ms_per_step": median["cycle"] - median["worker"],
            "data_wait_fraction": median["data_wait_fraction"]}


if __name__ == "__main__":
    raise SystemExit(main())
