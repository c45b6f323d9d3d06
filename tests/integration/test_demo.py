"""`make demo` as a user runs it (every stage shortened): the coordinator, the data, the recipe's
five jobs one after the other, and the closing table."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def test_the_demo_runs_the_whole_chain_and_ends_with_a_table(tmp_path):
    run = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--workdir", str(tmp_path / "demo"),
                          "--steps", "2"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.split("recipe finished in ")[1].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    table = lines[header + 1:]
    assert [line.split()[0] for line in table] == [f"internvideo-tiny/{s}" for s in
                                                   ("mae", "mm", "post-mae", "post-mm", "interaction")]
    assert all(line.split()[2] == "SUCCEEDED" for line in table), table
    assert "final_loss=" in table[0] and "val_t2v_r1=" in table[1] and "val_top1=" in table[4]
