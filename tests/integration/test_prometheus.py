"""A real Prometheus server discovers the workers through the coordinator's targets file and scrapes them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.integration.conftest import REPO, free_port, tiny_job, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus(coordinator, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("INTERNVIDEO_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus is not installed (.ci/run installs Debian's package)")
        pytest.skip("prometheus is not installed; `apt-get install prometheus` to run this test")
    root = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    sd = config["scrape_configs"][0]["file_sd_configs"][0]
    sd["files"] = [str(coordinator.state_dir / "prometheus" / "targets.json")]
    sd["refresh_interval"] = "1s"
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with open(root / "prometheus.log", "wb") as log:
        process = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address={address}"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _get(f"http://{address}/-/ready") is not None, 60, "prometheus to be ready")
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return None


def query(address: str, promql: str) -> list[dict]:
    body = _get(f"http://{address}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    return json.loads(body)["data"]["result"] if body else []


def test_prometheus_scrapes_every_worker_of_a_running_job(prometheus, client, dataset):
    job = tiny_job(client, dataset.train_list, "train.steps=2000", "train.checkpoint_every=0")
    try:
        steps = wait_for(lambda: (r := query(prometheus, f'internvideo_train_steps_total{{job="{job.job_id}"}}'))
                         and len(r) == 2 and all(float(s["value"][1]) >= 2 for s in r) and r,
                         120, "both trainers' step counters in prometheus")
        assert sorted(s["metric"]["rank"] for s in steps) == ["0", "1"]
        assert all(s["metric"]["component"] == "trainer" for s in steps)
        clips = wait_for(lambda: (r := query(prometheus, f'internvideo_decode_clips_total{{job="{job.job_id}"}}'))
                         and len(r) == 2 and r, 30, "both decode workers' counters (scraped one by one)")
        assert all(float(s["value"][1]) > 0 for s in clips)
        rate = wait_for(lambda: query(prometheus, f'sum(rate(internvideo_train_samples_total{{job="{job.job_id}"}}[5s]))'),
                        30, "a clips/s rate")
        assert float(rate[0]["value"][1]) > 0
        running = query(prometheus, 'internvideo_jobs{state="RUNNING"}')
        assert running and float(running[0]["value"][1]) >= 1
    finally:
        client.cancel(job.job_id)
    # Once the job is gone, so are its targets.
    wait_for(lambda: not [t for t in json.loads(_get(f"http://{prometheus}/api/v1/targets"))["data"]["activeTargets"]
                          if t["labels"].get("job_id") == job.job_id], 30, "the job's targets to be dropped")
