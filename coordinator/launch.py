"""Start ``internvideo serve`` as a child process and wait until it serves (the demo and the tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from coordinator.client import ClientTls, JobClient


def launch_coordinator(state_dir: Path, log_path: Path, *extra_args: str, timeout_s: float = 120.0,
                       env: dict[str, str] | None = None, tls: ClientTls | None = None, cwd: str | None = None
                       ) -> tuple[subprocess.Popen, dict[str, str]]:
    """Returns the process (leader of its own session) and its endpoints ``{"grpc", "metrics"}`` with
    ``token``, the admin token it wrote on its first start. ``env``: variables to set for it (and the
    Ray processes it starts) on top of this process's; ``tls``: how to reach it when it serves TLS;
    ``cwd``: where it runs (a benchmark's peer: another revision's code). A coordinator from before
    tokens has none ("").

    Ports are picked by the OS and read back from ``<state_dir>/coordinator.json``, so
    concurrent coordinators never race for a port.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    endpoints = state_dir / "coordinator.json"
    endpoints.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--listen", "127.0.0.1:0", "--metrics-port", "0",
             "--state-dir", str(state_dir), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
            cwd=cwd)
    deadline = time.monotonic() + timeout_s
    while not endpoints.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the coordinator did not start (exit code {process.poll()}); its log:\n{tail}")
        time.sleep(0.2)
    info = json.loads(endpoints.read_text())
    info["token"] = Path(info["token_file"]).read_text().strip() if "token_file" in info else ""
    with JobClient(info["grpc"], tls=tls) as client:
        client.wait_ready(timeout_s=max(1.0, deadline - time.monotonic()))
    return process, info
