"""The Grafana dashboards: generated from code (not stale), valid against Grafana's dashboard JSON
schema, and using only our metric names. (Their PromQL runs against a real Prometheus in
tests/integration/test_prometheus.py.)"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "grafana" / "dashboard.jsonschema.json"


def load_generator():
    spec = importlib.util.spec_from_file_location("dashboards", REPO / "deploy" / "grafana" / "dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))}


def expressions(board: dict) -> list[str]:
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


def test_committed_dashboards_are_what_the_code_generates() -> None:
    rendered = load_generator().render()
    assert rendered.keys() == committed().keys() == {"training-efficiency.json", "cluster-and-jobs.json"}
    for name, text in rendered.items():
        assert (REPO / "deploy/grafana/dashboards" / name).read_text() == text, \
            f"{name} is stale: run python deploy/grafana/dashboards.py"


@pytest.mark.parametrize("name", ["training-efficiency.json", "cluster-and-jobs.json"])
def test_dashboards_validate_against_grafanas_schema(name: str) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    board = committed()[name]
    jsonschema.validate(board, schema)
    # The schema accepts it; now what a broken dashboard would get wrong, to show it can fail.
    broken = {**board, "panels": [{**board["panels"][1], "gridPos": {"h": "tall"}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def exported_series(tmp_path: Path) -> set[str]:
    """Every series name the workers and the coordinator export (a family's name with the suffixes
    Prometheus gives counters and histograms)."""
    from prometheus_client import REGISTRY as PROCESS_REGISTRY

    import workers.telemetry  # noqa: F401 — registers the workers' metrics in the process registry
    from coordinator import metrics
    from coordinator.store import JobStore
    from workers.energy import NodeEnergy

    collectors = [PROCESS_REGISTRY, metrics.REGISTRY, metrics.JobsCollector(JobStore(tmp_path / "jobs.sqlite")),
                  NodeEnergy("node", tmp_path / "lock", root=tmp_path)]
    families = {family.name for collector in collectors for family in collector.collect()}
    return {f"{family}{suffix}" for family in families for suffix in ("", "_total", "_bucket", "_sum", "_count")}


def test_dashboards_use_only_metrics_we_export_and_their_variables(tmp_path: Path) -> None:
    exported = exported_series(tmp_path)
    for name, board in committed().items():
        exprs = expressions(board)
        assert exprs, name
        used = {m for e in exprs for m in re.findall(r"\b(internvideo_[a-z_]+)", e)}
        assert used and used <= exported, f"{name} queries series nothing exports: {sorted(used - exported)}"
        assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job", "kind"}
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
    titles = {p["title"] for board in committed().values() for p in board["panels"]}
    for wanted in ("Clips per second", "Step time", "Data-wait fraction", "Model FLOPs utilisation", "Power",
                   "Joules per clip", "FLOP per joule", "Goodput", "GPU-hours", "Loss", "Task metrics",
                   "Jobs by state", "Queue wait", "Workers per job", "Rescales and failures, by cause",
                   "Decode throughput", "Decode errors, by reason"):
        assert wanted in titles, wanted
