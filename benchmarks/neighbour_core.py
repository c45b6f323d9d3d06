"""What a busy neighbour core costs a training step: the plain-torch loop of ``job_path`` (tiny-cpu
``pretrain-mae``, one thread) pinned to one core, alone, and beside a process on the other core that
spins (busy, touching no memory), streams through 512 MB (busy on memory), or decodes the job's clips
without pause (the job's own sample function). It tells what a busy neighbour costs a step by itself
from what the job's feed costs it (``job_path``, whose plain-loop peer runs next to an idle core).

    python -m benchmarks.neighbour_core --out benchmarks/results/cpu_neighbour_core.json
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import record
from benchmarks.job_path import decoded_steps, plain
from coordinator.client import read_config
from coordinator.submission import validate_submission
from internvideo.data.synthetic import write_synthetic_dataset
from internvideo.tasks import TaskRef


def spin() -> None:
    while True:
        pass


def stream_memory() -> None:
    array = np.ones(64 * 1024 * 1024)  # 512 MB: far past the caches
    while True:
        array += 1


def decode(task, list_path: Path) -> None:
    while True:
        decoded_steps(task, list_path, 4)


def beside(neighbour, args: tuple, core: int, run):
    """``run()`` while ``neighbour(*args)`` runs in a process of its own pinned to ``core``."""
    if neighbour is None:
        return run()
    process = multiprocessing.get_context("spawn").Process(target=_pinned, args=(core, neighbour, args), daemon=True)
    process.start()
    try:
        time.sleep(3.0)  # its start-up (imports, the array's first touch) is not what is measured
        return run()
    finally:
        process.kill()
        process.join()


def _pinned(core: int, target, args: tuple) -> None:
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    target(*args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs two cores: one for the loop, one for its neighbour")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp), num_videos=64, num_frames=24, size=64, seed=0)
        spec = validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                                   overrides=[f"data.train_list={data.train_list}", f"train.steps={args.steps}"],
                                   min_workers=1, max_workers=1)
        task = TaskRef.of("pretrain-mae", spec.config).load()
        torch.set_num_threads(1)
        steps = decoded_steps(task, data.train_list, args.steps)
        os.sched_setaffinity(0, {cores[0]})
        neighbours = {"idle": (None, ()), "spinning": (spin, ()), "streaming memory": (stream_memory, ()),
                      "decoding": (decode, (task, data.train_list))}
        ran = record.in_turns({name: lambda n=n, a=a: beside(n, a, cores[1], lambda: plain(task, steps, args.warmup))
                               for name, (n, a) in neighbours.items()}, args.rounds)
    step_ms = {name: [statistics.median(times) * 1e3 for times in rounds] for name, rounds in ran.items()}
    median = {name: statistics.median(values) for name, values in step_ms.items()}
    record.save({"config": {"kind": "pretrain-mae", "preset": "tiny-cpu", "threads": 1, "rounds": args.rounds,
                            "timed_steps": args.steps - args.warmup, "cores": [cores[0], cores[1]]},
                 "machine": record.machine(),
                 "step_ms": median, "step_ms_per_round": step_ms,
                 "over_idle": {name: median["idle"] / ms for name, ms in median.items()}},
                args.out or Path("/dev/null"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
