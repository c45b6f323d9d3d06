"""`make demo` as a user runs it (shortened): the coordinator, the data, a job, the summary."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def test_the_demo_runs_a_job_end_to_end(tmp_path):
    run = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--workdir", str(tmp_path / "demo"),
                          "--steps", "3"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "state → SUCCEEDED" in run.stdout and ": SUCCEEDED" in run.stdout
    assert "step 3/3" in run.stdout and "throughput:" in run.stdout
    checkpoint = run.stdout.split("checkpoint: ")[-1].split()[0]
    assert checkpoint.endswith("step-00000003") and (tmp_path / "demo" / "state").is_dir()
