"""What telemetry costs a training step: the same worker's steps with it and without, in one run.

A real ``EncoderWorker`` (tiny-cpu masked pretraining, one rank, gloo) in this process pulls clips
from a real decode pool (Ray actors). Blocks of steps alternate between

- **off**: ``worker.train_step(step)`` alone;
- **on**: what a job does per step — ``worker.metered("train_step", step)`` (the energy meter read
  and exported), then the runner's accounting: ``UsageLedger.step`` and the flush into SQLite.

The Prometheus counters inside ``train_step`` run in both (they are the step's own, a few
microseconds); their cost, and each piece's, is timed on its own too.

    python -m benchmarks.telemetry [--blocks 6] [--steps-per-block 8] [--out benchmarks/results/telemetry_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import yaml

from benchmarks.record import machine
from coordinator.client import read_config
from coordinator.store import JobSpec, JobStore
from coordinator.submission import apply_overrides, derive_needs
from coordinator.usage import UsageLedger
from internvideo.data.synthetic import write_synthetic_dataset
from internvideo.tasks import TaskRef
from workers import telemetry
from workers.decode import Dataset, DecodePool, PoolSpec
from workers.trainer import EncoderWorker


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="internvideo-telemetry-"))
    dataset = write_synthetic_dataset(root / "data", num_videos=32, num_frames=24, size=64, seed=0)
    config = apply_overrides(yaml.safe_load(read_config("tiny-cpu")), [f"data.train_list={dataset.train_list}",
                                                     f"train.steps={args.blocks * args.steps_per_block * 2 + 1}",
                                                     "train.global_batch=8", "train.micro_batch=8"])
    task_ref = TaskRef.of("pretrain-mae", config)
    task = task_ref.load()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    store = JobStore(root / "jobs.sqlite")
    job, _ = store.create_job(JobSpec(kind="pretrain-mae", config=config, min_workers=1, max_workers=1,
                                      needs=derive_needs(task.config, 1, 1)))
    pool = DecodePool.create(PoolSpec(job_id=job.job_id, data=Dataset(task.config.data.source(), task.sample_fn()),
                                      seed=0, held_out=None, cpus=1.0, threads=1, host="127.0.0.1"), 2, 120)
    worker = EncoderWorker(job.job_id, task_ref, rank=0, world_size=1, host="127.0.0.1")
    num_samples = len(task.config.data.source().read())
    master_addr, master_port = worker.rendezvous_address()
    worker.setup(master_addr=master_addr, master_port=master_port, num_samples=num_samples,
                 decode_actors=pool.actors, timeout_s=120)
    ledger = UsageLedger()
    ledger.hold(1)

    def step_off(step: int) -> None:
        worker.train_step(step)

    accounting: list[float] = []

    def step_on(step: int) -> None:
        report, joules = worker.metered("train_step", step)
        began = time.perf_counter()
        ledger.step(step, [report["data_wait_seconds"]], joules)
        charged, held = ledger.flush()
        store.add_usage(job.job_id, charged, held)
        accounting.append(time.perf_counter() - began)

    step = 0
    step_off(step)  # warm-up: the first step pays for allocations and the pool's first clips
    step += 1
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for block in range(args.blocks * 2):
        mode = ("off", "on")[block % 2]
        for _ in range(args.steps_per_block):
            began = time.perf_counter()
            (step_off if mode == "off" else step_on)(step)
            seconds[mode].append(time.perf_counter() - began)
            step += 1
    labels = {"job": job.job_id, "kind": "pretrain-mae", "encoder": "videomae", "rank": "0"}
    pieces = {
        "prometheus_counters_in_a_step": timed(lambda: (
            telemetry.TRAIN_SAMPLES.labels(**labels).inc(8), telemetry.TRAIN_STEPS.labels(**labels).inc(),
            telemetry.TRAIN_STEP_SECONDS.labels(**labels).observe(0.3),
            telemetry.TRAIN_DATA_WAIT.labels(**labels).inc(0.01),
            telemetry.TRAIN_MODEL_FLOPS.labels(**labels).inc(1e9)), 1000),
        "energy_meter_read_and_export": timed(worker.joules_since_last_read, 1000),
        "ledger_flush_into_sqlite": timed(lambda: (ledger.step(step, [0.0], 1.0),
                                                   store.add_usage(job.job_id, *ledger.flush())), 200),
    }
    worker.shutdown()
    pool.shutdown()
    ray.shutdown()
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    return {
        "machine": machine(),
        "config": {"kind": "pretrain-mae", "preset": "tiny-cpu", "global_batch": 8, "world_size": 1,
                   "decode_workers": 2, "blocks_each": args.blocks, "steps_per_block": args.steps_per_block},
        "step_seconds_median": {"telemetry_off": off, "telemetry_on": on},
        "step_seconds_all": seconds,
        "on_over_off": on / off,
        "accounting_seconds_in_the_on_steps_median": statistics.median(accounting),
        "telemetry_seconds_per_step": pieces,
        "telemetry_share_of_a_step": sum(pieces.values()) / off,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6, help="blocks of each mode, alternating")
    parser.add_argument("--steps-per-block", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "telemetry_cpu.json")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "step_seconds_all"}, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
