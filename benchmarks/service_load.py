"""The coordinator as a shared service under load: a deep queue, 200 concurrent clients, 1,000 watchers.

One real coordinator (gRPC on loopback, embedded Ray, SQLite), its jobs in a tenant whose GPU quota
is 0 — every job stays queued, nothing trains, so what is measured is the service itself:

1. **Deep queue**: ``--depth`` jobs that wait, submitted by 8 clients; then an idle minute's CPU of the
   coordinator process (not Ray's) and the latency of 200 more submits, one at a time. The same is
   measured, in the same run, on a peer: the coordinator as it was before (``--peer-rev``, a git
   revision run from a worktree) at ``--peer-depth``, where the issue measured it.
2. **200 clients for a minute** (4 processes × 50 threads): each loops submit, list, get, replay its
   job's history; p50/p99 of each call, every error by status code, the coordinator's CPU and memory.
3. **1,000 watch streams** open at once (20 tokens × 50), each following a queued job: the time until
   every stream has its first event, the coordinator's CPU and memory while they are open, then how
   long a cancel takes to reach the stream that follows the job.

The load runs on the same machine as the coordinator (2 cores here): its latencies include that.

    python -m benchmarks.service_load [--depth 5000] [--peer-depth 1500] [--out benchmarks/results/service_load_cpu.json]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from benchmarks.record import machine, save
from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from coordinator.tenancy import Quota, Role, TokenStore
from internvideo.data.synthetic import write_synthetic_dataset
from protos.internvideo.v1 import jobs_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
TENANT = "load"


class ProcessMeter:
    """CPU seconds and resident memory of one process, from /proc (the coordinator, not its Ray)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.tick = pid, os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def core_fraction(self, seconds: float) -> float:
        began, start = self.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        return (self.cpu_seconds() - began) / (time.monotonic() - start)


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.array(latencies_s) * 1e3
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def job_args(train_list: Path) -> tuple[str, list[str]]:
    return read_config("tiny-cpu"), [f"data.train_list={train_list}", "train.steps=1"]


# Jobs that do not fit (16 trainers; the embedded default here has 2 slots): they wait at the head
# of the queue, as the issue measured. (The load tenant's GPU quota of 0 would hold any other.)
UNFIT = ["train.micro_batch=1"]
UNFIT_WORKERS = 16


def timed_submits(client: JobClient, train_list: Path, count: int, threads: int) -> list[float]:
    config, overrides = job_args(train_list)

    def one(_: int) -> float:
        began = time.perf_counter()
        client.submit("pretrain-mae", config, [*overrides, *UNFIT], min_workers=UNFIT_WORKERS)
        return time.perf_counter() - began

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def start(root: Path, pythonpath: str | None = None) -> tuple[subprocess.Popen, dict, str]:
    """A coordinator (from ``pythonpath``'s code if given) and a token of the load tenant ("" for a
    coordinator from before tokens)."""
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    process, info = launch_coordinator(root / "state", root / "coordinator.log", "--ray-dashboard-port", "-1",
                                       "--num-cpus", "2", env=env, cwd=pythonpath)
    if not info.get("token"):
        return process, info, ""
    tokens = TokenStore(root / "state" / "jobs.sqlite")
    tokens.set_quota(TENANT, Quota(max_running_gpus=0))
    token = tokens.create(TENANT, Role.MEMBER, "benchmark")[1]
    tokens.close()
    return process, info, token


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


def deep_queue(root: Path, train_list: Path, depth: int, pythonpath: str | None = None) -> dict:
    process, info, token = start(root, pythonpath)
    meter = ProcessMeter(info["pid"])
    try:
        with JobClient(info["grpc"], token=token, timeout_s=120) as client:
            empty = timed_submits(client, train_list, 200, threads=1)
            timed_submits(client, train_list, depth - 200, threads=8)
            time.sleep(5)  # let the submit burst settle
            idle = meter.core_fraction(60)
            deep = timed_submits(client, train_list, 200, threads=1)
        return {"depth": depth, "idle_core_fraction": round(idle, 4),
                "submit_empty_queue": percentiles(empty), "submit_deep_queue": percentiles(deep),
                "coordinator_rss_mib": round(meter.rss_mib(), 1)}
    finally:
        stop(process)


def client_worker(address: str, token: str, train_list: str, seconds: float, threads: int, out) -> None:
    """One load process: ``threads`` clients, each looping submit, list, get, replay."""
    calls: dict[str, list[float]] = {"submit": [], "list": [], "get": [], "watch_replay": []}
    errors: Counter = Counter()
    lock = threading.Lock()
    config, overrides = job_args(Path(train_list))
    deadline = time.monotonic() + seconds

    def loop() -> None:
        with JobClient(address, token=token, timeout_s=60) as client:
            job_id = None
            while time.monotonic() < deadline:
                for name, call in (("submit", lambda: client.submit("pretrain-mae", config, overrides)),
                                   ("list", lambda: client.list(page_size=50)),
                                   ("get", lambda: client.get(job_id)),
                                   ("watch_replay", lambda: list(client.watch(job_id, follow=False)))):
                    began = time.perf_counter()
                    try:
                        result = call()
                    except grpc.RpcError as err:
                        with lock:
                            errors[err.code().name] += 1
                        continue
                    with lock:
                        calls[name].append(time.perf_counter() - began)
                    if name == "submit":
                        job_id = result.job_id

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((calls, dict(errors)))


def many_clients(info: dict, token: str, train_list: Path, clients: int, seconds: float) -> dict:
    meter = ProcessMeter(info["pid"])
    processes, threads = 4, clients // 4
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=client_worker, args=(info["grpc"], token, str(train_list), seconds, threads,
                                                           out)) for _ in range(processes)]
    cpu_before, began = meter.cpu_seconds(), time.monotonic()
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.monotonic() - began
    calls = {name: [t for r, _ in results for t in r[name]] for name in results[0][0]}
    errors = sum((Counter(e) for _, e in results), Counter())
    return {"clients": clients, "seconds": seconds, "errors": dict(errors),
            "calls": {name: percentiles(ts) for name, ts in calls.items() if ts},
            "calls_per_second": round(sum(len(ts) for ts in calls.values()) / elapsed, 1),
            "coordinator_core_fraction": round((meter.cpu_seconds() - cpu_before) / elapsed, 3),
            "coordinator_rss_mib": round(meter.rss_mib(), 1)}


def watch_streams(root: Path, info: dict, train_list: Path, streams: int, tokens_count: int) -> dict:
    meter = ProcessMeter(info["pid"])
    store = TokenStore(root / "state" / "jobs.sqlite")
    tokens = [store.create(TENANT, Role.MEMBER, f"watcher {i}")[1] for i in range(tokens_count)]
    store.close()
    with JobClient(info["grpc"], token=tokens[0], timeout_s=120) as submitter:
        config, overrides = job_args(train_list)
        jobs = [submitter.submit("pretrain-mae", config, overrides).job_id for _ in range(streams)]
    first_event, ended_at, errors = {}, {}, Counter()
    lock, closing = threading.Lock(), threading.Event()
    clients = [JobClient(info["grpc"], token=t, timeout_s=600) for t in tokens]
    opened = time.monotonic()

    def follow(index: int) -> None:
        job_id = jobs[index]
        try:
            for event in clients[index % tokens_count].watch(job_id):
                with lock:
                    first_event.setdefault(job_id, time.monotonic())
                if event.WhichOneof("body") == "state_changed" and event.state_changed.to_state == pb.JOB_STATE_CANCELLED:
                    with lock:
                        ended_at[job_id] = time.monotonic()
        except grpc.RpcError as err:
            if not closing.is_set():  # the streams this benchmark closes at its end are no errors
                with lock:
                    errors[err.code().name] += 1

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    while len(first_event) + sum(errors.values()) < streams and time.monotonic() - opened < 300:
        time.sleep(0.2)
    all_open_s = time.monotonic() - opened
    idle = meter.core_fraction(30)
    rss = meter.rss_mib()
    cancelled_at = {}
    with JobClient(info["grpc"], token=tokens[0], timeout_s=120) as canceller:
        for job_id in jobs[:100]:
            cancelled_at[job_id] = time.monotonic()
            canceller.cancel(job_id)
    deadline = time.monotonic() + 60
    while len(ended_at) < 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    reach = [ended_at[j] - cancelled_at[j] for j in jobs[:100] if j in ended_at]
    closing.set()
    for client in clients:
        client.close()
    return {"streams": streams, "tokens": tokens_count, "errors": dict(errors),
            "streams_with_first_event": len(first_event), "all_open_seconds": round(all_open_s, 2),
            "idle_core_fraction_with_streams_open": round(idle, 4), "coordinator_rss_mib": round(rss, 1),
            "cancel_reached_watcher": percentiles(reach) if reach else None, "cancels_seen": len(reach)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=5000)
    parser.add_argument("--peer-depth", type=int, default=1500)
    parser.add_argument("--peer-rev", default="a6831f6", help="the coordinator before this work (no --peer: skip)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/service_load_cpu.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="service-load-"))
    dataset = write_synthetic_dataset(root / "data", num_videos=32, num_frames=8, size=32, seed=0)
    result = {"machine": machine(), "config": vars(args) | {"out": str(args.out)}}

    if args.peer_rev:
        peer = root / "peer"
        subprocess.run(["git", "worktree", "add", "--detach", str(peer), args.peer_rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            result["peer_deep_queue"] = deep_queue(root / "peer-run", dataset.train_list, args.peer_depth, str(peer))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(peer)], cwd=REPO, check=True)
        result["deep_queue_at_peer_depth"] = deep_queue(root / "ours-peer-depth", dataset.train_list, args.peer_depth)
    result["deep_queue"] = deep_queue(root / "ours", dataset.train_list, args.depth)

    process, info, token = start(root / "load")
    try:
        result["many_clients"] = many_clients(info, token, dataset.train_list, args.clients, args.seconds)
        result["watch_streams"] = watch_streams(root / "load", info, dataset.train_list, args.streams, 20)
    finally:
        stop(process)
    save(result, args.out)


if __name__ == "__main__":
    main()
