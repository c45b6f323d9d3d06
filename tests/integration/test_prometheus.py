"""A real Prometheus server discovers the workers through the coordinator's targets file and scrapes them."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.integration.conftest import REPO, free_port, held, release, tiny_job, wait_for

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


def _api(address: str, endpoint: str, **params: str) -> dict | None:
    """The ``data`` of a Prometheus HTTP API answer, or None while there is none to be had: no
    connection, a server still starting, a non-JSON body, an error Prometheus may recover from —
    so that ``wait_for`` asks again. A request Prometheus rejects as malformed (``bad_data``: a
    PromQL syntax error) is the test's own mistake and fails at once instead of timing out."""
    url = f"http://{address}/api/v1/{endpoint}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # API errors come as 4xx/5xx with a JSON body that says why
        try:
            body = error.read()
        except OSError:
            return None
    except OSError:
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    if answer.get("status") == "success":
        return answer.get("data")
    if answer.get("errorType") == "bad_data":
        pytest.fail(f"prometheus rejected {params or endpoint}: {answer.get('error')}")
    return None


def query(address: str, promql: str) -> list[dict]:
    """The instant vector ``promql`` selects now; [] until Prometheus can answer (see ``_api``)."""
    data = _api(address, "query", query=promql)
    return data["result"] if data else []


def test_prometheus_scrapes_every_worker_of_a_running_job(prometheus, client, coordinator, list_with_bad_videos):
    list_path, bad = list_with_bad_videos
    job = tiny_job(client, list_path, "train.steps=2000", "train.checkpoint_every=0", "data.max_bad_fraction=0.5",
                   "debug.hold_at_steps=[4]")
    try:
        held(client, job.job_id, 4)
        release(coordinator.state_dir, job.job_id, 4)
        # Each decode worker counts a bad video once, when it first meets it (2 workers: at most twice).
        expected = collections.Counter(v.reason for v in client.get(job.job_id).skipped_videos)
        assert expected, "the list puts bad videos in the first steps"

        def errors_by_reason() -> dict[str, float]:
            rows = query(prometheus, f'sum by (reason) (internvideo_decode_errors_total{{job="{job.job_id}"}})')
            counts = {s["metric"]["reason"]: float(s["value"][1]) for s in rows if float(s["value"][1])}
            return counts if counts.keys() == expected.keys() and all(
                expected[r] <= counts[r] for r in expected) else {}

        errors = wait_for(errors_by_reason, 60, f"decode errors {dict(expected)} in prometheus")
        assert all(errors[r] <= 2 * expected[r] for r in expected), errors
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
    wait_for(lambda: (targets := _api(prometheus, "targets")) is not None
             and not [t for t in targets["activeTargets"] if t["labels"].get("job_id") == job.job_id],
             30, "the job's targets to be dropped")
