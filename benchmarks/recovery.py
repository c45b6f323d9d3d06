"""Time from node loss to training again, and the steps redone, at several checkpoint intervals.

A simulated cluster (ray.cluster_utils: a head with 2 CPUs, three 1-GPU nodes on this CPU
machine) runs the tiny-cpu pretraining job on 3 workers; at step 7 the node of one trainer is
killed. From the job's own event stream: detection (kill → RECOVERING event), restart
(RECOVERING → RUNNING), time to training again (kill → first step completed after RUNNING) and
steps redone (progress events past the unique steps).

    python -m benchmarks.recovery --intervals 2 8 --out benchmarks/results/recovery_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import tempfile
import time
from pathlib import Path

from ray.cluster_utils import Cluster

from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.synthetic import write_synthetic_dataset
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import node_of_a_trainer

KILL_AT_STEP = 7


def run_once(client: JobClient, cluster: Cluster, gpu_nodes: list, train_list: Path, interval: int) -> dict:
    job = client.submit("pretrain-mae", read_config("tiny-cpu"), [
        f"data.train_list={train_list}", "train.global_batch=12", "train.micro_batch=2", "train.steps=24",
        f"train.checkpoint_every={interval}"], min_workers=1, max_workers=3)
    while client.get(job.job_id).progress.step < KILL_AT_STEP:
        time.sleep(0.05)
    node = node_of_a_trainer(gpu_nodes)
    killed_at = time.time()
    cluster.remove_node(node, allow_graceful=False)
    gpu_nodes.remove(node)
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.message

    def t(event) -> float:
        return event.time.ToNanoseconds() / 1e9

    recovering = next(e for e in events if e.WhichOneof("body") == "state_changed"
                      and e.state_changed.to_state == pb.JOB_STATE_RECOVERING)
    running = next(e for e in events if e.seq > recovering.seq and e.WhichOneof("body") == "state_changed"
                   and e.state_changed.to_state == pb.JOB_STATE_RUNNING)
    first_step = next(e for e in events if e.seq > running.seq and e.WhichOneof("body") == "progress")
    progress = [e for e in events if e.WhichOneof("body") == "progress"]
    return {"checkpoint_every": interval, "killed_at_step": KILL_AT_STEP,
            "detect_seconds": t(recovering) - killed_at, "restart_seconds": t(running) - t(recovering),
            "node_loss_to_training_seconds": t(first_step) - killed_at,
            "steps_redone": len(progress) - 24, "world_size_after": job.checkpoints[-1].world_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = write_synthetic_dataset(root / "data", num_videos=32, num_frames=24, size=64, seed=0)
        for interval in args.intervals:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
            gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(3)]
            cluster.wait_for_nodes()
            process, endpoints = launch_coordinator(root / f"state{interval}", root / f"coordinator{interval}.log",
                                                    "--ray-address", cluster.address, "--worker-host", "127.0.0.1",
                                                    "--placement-timeout", "15")
            try:
                with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
                    results.append(run_once(client, cluster, gpu_nodes, dataset.train_list, interval))
                print(json.dumps(results[-1]), flush=True)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=90)
                cluster.shutdown()
    summary = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "python": platform.python_version()},
               "config": "tiny-cpu, global batch 12 (micro 2), 3 → 2 workers, 24 steps, node killed at step 7",
               "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
