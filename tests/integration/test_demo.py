"""`make demo` as a user runs it (every training stage shortened): the coordinator, the data, the
recipe's five training jobs and two evaluations one after the other, and the closing tables; then,
from the demo's records, that the recipe ran as one submission, each stage after those it names."""
from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.client import JobClient
from coordinator.demo import EVAL_STAGES, STAGES
from tests.integration.conftest import REPO, running_coordinator
from tests.integration.test_jobs import bodies, state
from tests.integration.test_recipes import history, moments

pytestmark = pytest.mark.integration


def test_the_demo_runs_the_whole_chain_and_ends_with_a_table(tmp_path):
    run = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--workdir", str(tmp_path / "demo"),
                          "--steps", "2"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.split("recipe finished in ")[1].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    names = (*STAGES, *EVAL_STAGES)
    stages = [f"internvideo-tiny/{s}" for s in names]
    table = lines[header + 1:header + 1 + len(stages)]
    assert [line.split()[0] for line in table] == stages
    assert all(line.split()[2] == "SUCCEEDED" for line in table), table
    assert "final_loss=" in table[0] and "val_t2v_r1=" in table[1] and "val_top1=" in table[4]
    assert "top1=" in table[5] and "mean_class_accuracy=" in table[5] and "t2v_r1=" in table[6]

    # The efficiency table: energy labelled as estimated on this machine, a report page per stage.
    assert "energy estimated from declared power" in run.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("job ") and "goodput" in line)
    efficiency = lines[header + 1:header + 1 + len(stages)]
    assert [line.split()[0] for line in efficiency] == stages
    assert all(line.endswith("estimate") and "%" in line.split()[2] for line in efficiency), efficiency
    for stage in names:
        assert (tmp_path / "demo" / "reports" / stage / "index.html").exists()
    # A newcomer's first start prints no error (Ray's dashboard has what it needs).
    log = (tmp_path / "demo" / "coordinator.log").read_text()
    assert not [line for line in log.splitlines() if " ERROR " in line or line.startswith("ERROR")], log[-3000:]

    # The demo's records, through a coordinator started again on its state.
    with running_coordinator(tmp_path / "demo") as coordinator, \
            JobClient(coordinator.address, token=coordinator.token) as client:
        jobs = client.list(page_size=1000).jobs
        assert [j.name for j in jobs] == stages  # one submission, in dependency order
        by_name = {j.name.split("/")[1]: j for j in jobs}
        assert set(by_name["interaction"].depends_on) == {by_name["post-mae"].job_id, by_name["post-mm"].job_id}
        assert list(by_name["eval-post-mae"].depends_on) == [by_name["post-mae"].job_id]
        assert list(by_name["eval-mm"].depends_on) == [by_name["mm"].job_id]
        assert {n: state(j) for n, j in by_name.items()} == dict.fromkeys(names, "SUCCEEDED")
        events = {name: history(client, job) for name, job in by_name.items()}
        for name, job in by_name.items():
            # Nothing ran twice: one start, each step (an evaluation: its one shard) once.
            assert len(moments(events[name], "STARTING")) == 1
            assert [p.step for p in bodies(events[name], "progress")] == ([1] if name in EVAL_STAGES else [1, 2])
            for dependency in job.depends_on:
                (finished,) = moments(history(client, client.get(dependency)), "SUCCEEDED")
                assert moments(events[name], "STARTING")[0] >= finished  # it waited
        assert "final_accuracy" in by_name["interaction"].result.metrics
        assert "top1" in by_name["eval-post-mae"].result.metrics and "t2v_r1" in by_name["eval-mm"].result.metrics
