"""A real coordinator process (gRPC on 127.0.0.1, embedded Ray, SQLite) shared by a module's tests."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import torch

from coordinator.client import ClientTls, JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.lists import VideoRecord, read_video_list, write_video_list
from internvideo.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Coordinator:
    """``internvideo serve`` in its own process session; ports are picked by the OS (port 0) and
    read back from the coordinator's ``coordinator.json``, so no two tests race for a port."""

    state_dir: Path
    log_path: Path
    address: str = ""
    token: str = ""  # the admin token it wrote on its first start
    metrics_port: int = 0
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # for the coordinator and the Ray processes it starts
    ray_dashboard: bool = False  # one process fewer to start on a loaded machine, where no test looks at it
    args: tuple[str, ...] = ()  # more `internvideo serve` options
    tls: ClientTls | None = None  # how to reach it when it serves TLS

    def start(self) -> None:
        # A job kind from the test folder, known to the coordinator and its workers only through the
        # registry's INTERNVIDEO_TASK_MODULES: adding a kind touches no coordinator or worker code.
        dashboard = [] if self.ray_dashboard else ["--ray-dashboard-port", "-1"]
        self.process, info = launch_coordinator(self.state_dir, self.log_path, "--num-cpus", "4", *dashboard,
                                                *self.args, tls=self.tls,
                                                env={"INTERNVIDEO_TASK_MODULES": "tests.integration.tiny_kind",
                                                     **self.env})
        self.address, self.metrics_port = info["grpc"], int(info["metrics"].rsplit(":", 1)[1])
        self.token = info["token"]

    def kill(self) -> None:
        """SIGKILL the whole process group: the coordinator and the Ray processes it started."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process:
            try:  # Ray helpers that outlived their driver
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_videos=32, num_frames=24, size=64, seed=0)


@contextlib.contextmanager
def running_coordinator(root: Path, ray_dashboard: bool = False, args: tuple[str, ...] = (),
                        tls: ClientTls | None = None, **env: str) -> Iterator[Coordinator]:
    coord = Coordinator(state_dir=root / "state", log_path=root / "coordinator.log", env=env,
                        ray_dashboard=ray_dashboard, args=args, tls=tls)
    coord.start()
    try:
        yield coord
    finally:
        coord.stop()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with running_coordinator(tmp_path_factory.mktemp("coordinator")) as coord:
        yield coord


@pytest.fixture
def client(coordinator):
    with JobClient(coordinator.address, token=coordinator.token) as c:
        yield c


@pytest.fixture
def list_with_bad_videos(dataset, tmp_path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"this is not an mp4 file" * 64)
    good = Path(dataset.train_list.parent / "videos" / "000000.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 2])
    bad = {str(tmp_path / "missing.mp4"): "missing", str(tmp_path / "empty.mp4"): "empty",
           str(tmp_path / "garbage.mp4"): "corrupt", str(tmp_path / "truncated.mp4"): "corrupt"}
    records = read_video_list(dataset.train_list) + [VideoRecord(path, 0) for path in bad]
    write_video_list(tmp_path / "list.txt", records)
    return tmp_path / "list.txt", bad


def tiny_job(client: JobClient, train_list, *overrides: str, workers: int = 2, **kwargs):
    """Submit a tiny-cpu pretraining job on ``train_list``."""
    return client.submit("pretrain-mae", read_config("tiny-cpu"),
                         [f"data.train_list={train_list}", *overrides], min_workers=workers,
                         max_workers=workers, **kwargs)


def weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """The model weights of a committed DeepSpeed checkpoint."""
    (states,) = Path(checkpoint).glob("mp_rank_00_model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def held(client: JobClient, job_id: str, step: int, timeout_s: float = 300):
    """Wait until the job is held at ``step`` (``debug.hold_at_steps``); returns its record."""
    return wait_for(lambda: (j := client.get(job_id)).message.startswith(f"held at step {step} ") and j, timeout_s,
                    f"job {job_id} to be held at step {step}")


def release(state_dir: Path, job_id: str, step: int) -> None:
    """Let a job held at ``step`` go on (the file its runner waits for)."""
    folder = state_dir / "jobs" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"release-{step}").touch()


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def node_of_a_trainer(gpu_nodes) -> object:
    """The simulated node whose raylet runs an EncoderWorker actor (workers are the raylet's children)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::EncoderWorker"):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        for node in gpu_nodes:
            if any(p.process.pid == parent for p in node.all_processes.get("raylet", [])):
                return node
    raise AssertionError("no EncoderWorker found on the simulated nodes")
