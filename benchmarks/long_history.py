"""A long job's history: WatchJob from the start, the coordinator's memory per watcher, the store per step.

A training job of ``--steps`` steps is written into a coordinator's state folder as the runner writes
it, through the store's own write path (one transaction per step): a progress event per step with
the runner's payload, a checkpoint and a validation every 1,000 steps, then its result. A real
coordinator (gRPC on loopback, embedded Ray, SQLite) starts on that folder and WatchJob replays the
ended job from the start: the time to its first event and to its last, and the coordinator process's
RSS increase (its peak during the replay, sampled every 10 ms, less its RSS before) while one watcher
replays, and, in a coordinator started afresh (memory a replay freed is not handed back to the OS),
while 10 replay at once; then GetJobEfficiency's latency. Also the store's size on disk per step and
the write path's cost per step.

Measured in the same run:

- **peer**: the coordinator before this work (``--peer-rev``, run from a git worktree: its store writes
  the history, its coordinator serves it), at ``--steps``;
- **ours on the peer's store**: the same file, upgraded in place (every step's event kept): paging alone;
- **ours** at ``--steps`` and at ``--long-steps``: written by our store, which thins old progress.

The watchers run on the same machine as the coordinator (2 cores here): their parsing is in the times.

    python -m benchmarks.long_history [--steps 200000] [--long-steps 1000000] [--peer-rev 74cbadd]
                                      [--out benchmarks/results/long_history_cpu.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.record import machine, save
from benchmarks.service_load import ProcessMeter, stop
from coordinator.client import JobClient
from coordinator.launch import launch_coordinator

REPO = Path(__file__).resolve().parent.parent
WORLD_SIZE, GLOBAL_BATCH = 8, 256
EVERY = 1000  # steps between checkpoints (each followed by a validation)
WRITE_SAMPLE = 10_000  # the write path's cost is reported over the first and the last this many steps


def fill(state_dir: Path, steps: int) -> dict:
    """Write an ended job of ``steps`` steps through the store of the code on ``sys.path`` (this
    process runs with the peer's code, or ours); returns its id, the write cost and the store's size."""
    from coordinator.state import JobState
    from coordinator.store import JobNeeds, JobSpec, JobStore

    store = JobStore(state_dir / "jobs.sqlite")
    job, _ = store.create_job(JobSpec(
        kind="pretrain-mae", config={"train": {"steps": steps, "global_batch": GLOBAL_BATCH}}, name="long",
        min_workers=WORLD_SIZE, max_workers=WORLD_SIZE, needs=JobNeeds((WORLD_SIZE,), 16, 1.0)))
    store.transition(job.job_id, JobState.STARTING, world_size=WORLD_SIZE)
    store.record_workers(job.job_id, [{"device_name": "NVIDIA H100 80GB HBM3", "peak_flops": 989e12,
                                       "peak": "H100 SXM", "energy_sources": ["nvml"]}] * WORLD_SIZE)
    store.transition(job.job_id, JobState.RUNNING, world_size=WORLD_SIZE)
    rng = random.Random(0)
    sample = min(WRITE_SAMPLE, steps)
    clock = {0: time.perf_counter()}  # after step: when
    for step in range(1, steps + 1):
        store.record_progress(job.job_id, progress(step, steps, rng))
        if step % EVERY == 0:
            store.record_checkpoint(job.job_id, step, f"{state_dir}/jobs/{job.job_id}/checkpoints/step-{step}",
                                    WORLD_SIZE)
            store.record_validation(job.job_id, {"step": step, "metrics": {"loss": rng.random()}})
        if step in (sample, steps - sample, steps):
            clock[step] = time.perf_counter()
    store.record_result(job.job_id, {"steps": steps, "final_loss": 0.5})
    store.transition(job.job_id, JobState.SUCCEEDED, world_size=0)
    events = store._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    store.close()  # the last connection's close folds the WAL into the file
    size = (state_dir / "jobs.sqlite").stat().st_size

    def per_step_us(start: int, end: int) -> float:
        return round((clock[end] - clock[start]) / (end - start) * 1e6, 1)

    return {"job_id": job.job_id, "steps": steps, "events_stored": events,
            "fill_seconds": round(clock[steps] - clock[0], 1),
            "write_us_per_step": {f"first_{sample}_steps": per_step_us(0, sample),
                                  f"last_{sample}_steps": per_step_us(steps - sample, steps)},
            "store_mib": round(size / 2**20, 2), "store_bytes_per_step": round(size / steps, 1)}


def progress(step: int, steps: int, rng: random.Random) -> dict:
    """The runner's progress payload (coordinator/runner.py ``_train``), for a pretrain-mae job on 8 GPUs."""
    seconds = 0.9 * rng.lognormvariate(0.0, 0.05)
    loss = 4.0 / (1 + step / 10_000) + rng.random() * 0.05
    return {"step": step, "total_steps": steps, "samples": step * GLOBAL_BATCH, "epoch": step * GLOBAL_BATCH // 10**7,
            "loss": loss, "metrics": {"loss": loss},
            "clips_per_second": GLOBAL_BATCH / seconds, "step_seconds": seconds, "step_samples": GLOBAL_BATCH,
            "data_wait_fraction": rng.random() * 0.02, "world_size": WORLD_SIZE, "decode_workers": 16,
            "model_flops": 3.1e16, "step_joules": 5200.0 * seconds, "held_gpu_seconds": 8 * 0.9 * step,
            "kept_gpu_seconds": 8 * 0.9 * (step - step % EVERY), "joules": 5200.0 * 0.9 * step}


def filled(state_dir: Path, steps: int, code: Path) -> dict:
    """``fill`` in a process of its own, with ``code``'s store."""
    out = subprocess.run([sys.executable, __file__, "--fill", str(state_dir), "--steps", str(steps)],
                         env={**os.environ, "PYTHONPATH": str(code)}, cwd=code, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class PeakRss(threading.Thread):
    """The highest RSS of a process, sampled every 10 ms while it runs (a ``with`` block)."""

    def __init__(self, meter: ProcessMeter) -> None:
        super().__init__(daemon=True)
        self.meter, self.peak, self._done = meter, meter.rss_mib(), threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self.meter.rss_mib())

    def __enter__(self) -> "PeakRss":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join()
        self.peak = max(self.peak, self.meter.rss_mib())


def replay(address: str, token: str, job_id: str) -> dict:
    """WatchJob from the start of an ended job, as a user would open it: it ends after the last event."""
    with JobClient(address, token=token) as client:
        began = time.perf_counter()
        first, events = None, 0
        for _ in client.watch(job_id):
            if first is None:
                first = time.perf_counter() - began
            events += 1
        return {"first_event_s": first, "replay_s": time.perf_counter() - began, "events": events}


def watched(state_dir: Path, job_id: str, watchers: int, code: Path | None) -> dict:
    """A coordinator started on ``state_dir``; ``watchers`` replay the job at once; then GetJobEfficiency."""
    env = {"PYTHONPATH": str(code)} if code else {}
    process, info = launch_coordinator(state_dir, state_dir.parent / f"coordinator-{watchers}.log",
                                       "--ray-dashboard-port", "-1", "--num-cpus", "2", env=env,
                                       cwd=str(code) if code else None)
    try:
        meter = ProcessMeter(info["pid"])
        time.sleep(3)  # let the start settle
        before = meter.rss_mib()
        with PeakRss(meter) as peak, ThreadPoolExecutor(watchers) as pool:
            replays = list(pool.map(lambda _: replay(info["grpc"], info["token"], job_id), range(watchers)))
        with JobClient(info["grpc"], token=info["token"], timeout_s=600) as client:
            began = time.perf_counter()
            client.efficiency(job_id)
            efficiency_s = time.perf_counter() - began
        return {"watchers": watchers, "events_each": replays[0]["events"],
                "first_event_s_max": round(max(r["first_event_s"] for r in replays), 3),
                "replay_s_max": round(max(r["replay_s"] for r in replays), 2),
                "rss_before_mib": round(before, 1), "rss_increase_mib": round(peak.peak - before, 1),
                "get_job_efficiency_s": round(efficiency_s, 3)}
    finally:
        stop(process)
        # Ray's processes that outlived it: the next start would join them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def measured(state_dir: Path, job_id: str, code: Path | None) -> dict:
    """One watcher, then 10 in a coordinator started afresh."""
    return {"one_watcher": watched(state_dir, job_id, 1, code), "ten_watchers": watched(state_dir, job_id, 10, code)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--long-steps", type=int, default=1_000_000, help="ours only (0: skip)")
    parser.add_argument("--peer-rev", default="74cbadd", help="the coordinator before this work ('': skip)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/long_history_cpu.json")
    parser.add_argument("--fill", type=Path, help=argparse.SUPPRESS)  # the writer process: fill this state folder
    args = parser.parse_args()
    if args.fill:
        print(json.dumps(fill(args.fill, args.steps)))
        return
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="long-history-"))
    result = {"machine": machine(), "config": vars(args) | {"out": str(args.out), "fill": None}}
    if args.peer_rev:
        peer = root / "peer-code"
        subprocess.run(["git", "worktree", "add", "--detach", str(peer), args.peer_rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            store = filled(root / "peer" / "state", args.steps, peer)
            result["peer"] = {"store": store, **measured(root / "peer" / "state", store["job_id"], peer)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(peer)], cwd=REPO, check=True)
        (root / "ours-on-peer-store" / "state").mkdir(parents=True)
        shutil.copy(root / "peer" / "state" / "jobs.sqlite", root / "ours-on-peer-store" / "state" / "jobs.sqlite")
        result["ours_on_peer_store"] = measured(root / "ours-on-peer-store" / "state", store["job_id"], None)
    for name, steps in (("ours", args.steps), ("ours_long", args.long_steps)):
        if steps:
            state_dir = root / name / "state"
            store = filled(state_dir, steps, REPO)
            result[name] = {"store": store, **measured(state_dir, store["job_id"], None)}
    result["benchmark_minutes"] = round((time.monotonic() - began) / 60, 1)
    save(result, args.out)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
