"""A real Prometheus server discovers the workers through the coordinator's targets file and scrapes
them; every PromQL expression of every Grafana dashboard returns data from a real running job."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from coordinator.client import read_config
from tests.integration.conftest import REPO, free_port, held, release, running_coordinator, tiny_job, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rapl(tmp_path_factory):
    """Fake RAPL counters (powercap files) that a thread advances at 40 W, wrapping around at 1 kJ."""
    root = tmp_path_factory.mktemp("powercap")
    zone = root / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("0\n")
    stop = threading.Event()

    def advance() -> None:
        energy = 0
        while not stop.wait(0.25):
            energy = (energy + 10_000_000) % 1_000_000_000
            (zone / "energy_uj.tmp").write_text(f"{energy}\n")
            os.replace(zone / "energy_uj.tmp", zone / "energy_uj")

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    yield root
    stop.set()
    thread.join()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, rapl):
    """This module's coordinator reads the fake RAPL counters (one process per node exports them)."""
    root = tmp_path_factory.mktemp("coordinator")
    with running_coordinator(root, INTERNVIDEO_RAPL_ROOT=str(rapl),
                             INTERNVIDEO_NODE_ENERGY_LOCK=str(root / "node-energy.lock")) as coord:
        yield coord


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


DASHBOARD_VARIABLES = {"$job": ".*", "$kind": ".*", "$__rate_interval": "20s"}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL with the variables set as Grafana would for "All")."""
    out = []
    for path in sorted((REPO / "deploy/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in DASHBOARD_VARIABLES.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"{path.name} / {panel['title']}: a variable the test does not set: {expr}"
                out.append((path.name, panel["title"], expr))
    return out


def test_every_dashboard_query_returns_data_from_a_running_job(prometheus, client, coordinator, dataset,
                                                               list_with_bad_videos):
    list_path, _ = list_with_bad_videos
    # A job with everything a dashboard shows: bad videos (decode errors), held-out data (validation
    # metrics), a declared peak (MFU on a CPU), checkpoints; held at step 6, after two of them.
    job = client.submit("finetune", read_config("tiny-cpu-finetune"), [
        f"data.train_list={list_path}", f"data.val_list={dataset.val_list}", "data.max_bad_fraction=0.5",
        "train.steps=200", "train.checkpoint_every=3", "telemetry.peak_flops=1.0e11", "debug.hold_at_steps=[6]"],
        min_workers=2, max_workers=2)
    try:
        held(client, job.job_id, 6)
        queries = dashboard_queries()
        assert len(queries) >= 25
        for board, title, expr in queries:
            wait_for(lambda: query(prometheus, expr), 60, f"{board} / {title!r} to return data: {expr}")
        # The variables' own queries list the job and its kind.
        jobs = _api(prometheus, "label/job/values", **{"match[]": "internvideo_job_gpu_seconds_total"})
        kinds = _api(prometheus, "label/kind/values", **{"match[]": f'internvideo_job_gpu_seconds_total{{job="{job.job_id}"}}'})
        assert job.job_id in jobs and kinds == ["finetune"]
        # Energy is labelled with where it comes from: an estimate for CPU workers, RAPL for the node.
        sources = {(r["metric"]["device"], r["metric"]["source"]) for r in query(
            prometheus, f'internvideo_energy_joules_total{{job="{job.job_id}"}}')}
        assert sources == {("cpu", "estimate")}
        node = query(prometheus, "rate(internvideo_node_energy_joules_total[10s])")
        assert [r["metric"]["source"] for r in node] == ["rapl"]  # one process per node exports it
        assert 20 < float(node[0]["value"][1]) < 60  # the fake counters run at 40 W, wrap-around included
        # What the targets file lists, the coordinator also serves for HTTP service discovery (KubeRay).
        served = json.loads(_get(f"http://127.0.0.1:{coordinator.metrics_port}/targets"))
        assert served == json.loads((coordinator.state_dir / "prometheus" / "targets.json").read_text())
        assert {g["labels"]["component"] for g in served} == {"coordinator", "trainer", "decode"}
        goodput = query(prometheus, f'sum(internvideo_job_use_gpu_seconds_total{{use="kept", job="{job.job_id}"}})'
                                    f' / sum(internvideo_job_gpu_seconds_total{{job="{job.job_id}"}})')
        assert 0 < float(goodput[0]["value"][1]) < 1
    finally:
        client.cancel(job.job_id)
