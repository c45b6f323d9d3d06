"""The Grafana dashboards, as code (grafana-foundation-sdk): ``python deploy/grafana/dashboards.py``
writes ``deploy/grafana/dashboards/*.json``; ``--check`` exits 1 if the committed JSON is stale.

Every query uses only the metric names of DESIGN.md's telemetry list, and the variables ``$job``
and ``$kind``; the tests run each one against a real Prometheus scraping a real job.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
TRAIN = 'job=~"$job", kind=~"$kind"'
WINDOW = "$__rate_interval"


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def graph(title: str, unit: str, *queries: prometheus.Dataquery, description: str = "",
          width: int = 12) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).description(description) \
        .height(8).span(width)
    for ref, q in zip("ABCDEFGH", queries):
        panel = panel.with_target(q.ref_id(ref))
    return panel


def number(title: str, unit: str, expr: str, legend: str = "", description: str = "") -> stat.Panel:
    return stat.Panel().title(title).unit(unit).datasource(DATASOURCE).description(description) \
        .height(5).span(6).with_target(query(expr, legend).ref_id("A"))


def rate(metric: str, by: str = "job", labels: str = TRAIN) -> str:
    return f"sum by ({by}) (rate({metric}{{{labels}}}[{WINDOW}]))"


def variables(board: dashboard.Dashboard, job_metric: str) -> dashboard.Dashboard:
    return board.with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")) \
        .with_variable(dashboard.QueryVariable("job").label("Job").datasource(DATASOURCE)
                       .query(f"label_values({job_metric}, job)").multi(True).include_all(True).all_value(".*")
                       .refresh(2)) \
        .with_variable(dashboard.QueryVariable("kind").label("Kind").datasource(DATASOURCE)
                       .query(f'label_values({job_metric}{{job=~"$job"}}, kind)').multi(True).include_all(True)
                       .all_value(".*").refresh(2))


def training_efficiency() -> dashboard.Dashboard:
    flops = rate("internvideo_train_model_flops_total")
    joules = rate("internvideo_energy_joules_total")
    board = dashboard.Dashboard("InternVideo · Training efficiency").uid("internvideo-training-efficiency") \
        .tags(["internvideo"]).refresh("10s").time("now-1h", "now").tooltip(1)
    board = variables(board, "internvideo_job_gpu_seconds_total")
    board = board.with_row(dashboard.Row("Throughput"))
    board = board.with_panel(graph("Clips per second", "cps", query(rate("internvideo_train_samples_total"), "{{job}}")))
    board = board.with_panel(graph(
        "Step time", "s",
        query(f"histogram_quantile(0.5, sum by (job, le) (rate(internvideo_train_step_seconds_bucket{{{TRAIN}}}"
              f"[{WINDOW}])))", "p50 {{job}}"),
        query(f"histogram_quantile(0.95, sum by (job, le) (rate(internvideo_train_step_seconds_bucket{{{TRAIN}}}"
              f"[{WINDOW}])))", "p95 {{job}}")))
    board = board.with_panel(graph(
        "Data-wait fraction", "percentunit",
        query(f"{rate('internvideo_train_data_wait_seconds_total')} / {rate('internvideo_train_step_seconds_sum')}",
              "{{job}}"), description="Share of step time the trainers waited for decoded clips."))
    board = board.with_panel(graph(
        "Model FLOPs utilisation", "percentunit",
        query(f"{flops} / sum by (job) (internvideo_device_peak_flops{{{TRAIN}}})", "{{job}}"),
        description="Model FLOPs (the kind's own count) over the devices' peak; no line where the peak is unknown."))
    board = board.with_row(dashboard.Row("Energy"))
    board = board.with_panel(graph("Power", "watt", query(rate("internvideo_energy_joules_total", "job, device, source"),
                                                          "{{job}} {{device}} ({{source}})"),
                                   description="Trainers' devices; source says measured (nvml, rapl) or estimate."))
    board = board.with_panel(graph("Joules per clip", "joule",
                                   query(f"{joules} / {rate('internvideo_train_samples_total')}", "{{job}}")))
    board = board.with_panel(graph("FLOP per joule", "short", query(f"{flops} / {joules}", "{{job}}")))
    board = board.with_panel(graph(
        "Energy by use", "joule", query(f"sum by (use) (internvideo_job_energy_joules_total{{{TRAIN}}})", "{{use}}"),
        description="Joules spent on kept steps against joules spent waiting, starting, checkpointing, redoing."))
    board = board.with_row(dashboard.Row("Goodput"))
    board = board.with_panel(number(
        "Goodput", "percentunit",
        f'sum(internvideo_job_use_gpu_seconds_total{{use="kept", {TRAIN}}}) / '
        f"sum(internvideo_job_gpu_seconds_total{{{TRAIN}}})",
        description="Share of the held GPU-time spent on steps that were kept."))
    board = board.with_panel(number("GPU-hours", "h", f"sum(internvideo_job_gpu_seconds_total{{{TRAIN}}}) / 3600"))
    board = board.with_panel(graph("GPU-time lost, by use", "s", query(
        f'sum by (use) (internvideo_job_use_gpu_seconds_total{{use!="kept", {TRAIN}}})', "{{use}}")))
    board = board.with_row(dashboard.Row("Learning"))
    board = board.with_panel(graph("Loss", "short", query(
        f'internvideo_job_train_metric{{name="loss", {TRAIN}}}', "{{job}}")))
    board = board.with_panel(graph("Task metrics", "short", query(
        f'internvideo_job_train_metric{{name!="loss", {TRAIN}}}', "{{job}} {{name}}"),
        query(f"internvideo_job_validation_metric{{{TRAIN}}}", "{{job}} val {{name}}")))
    return board


def cluster_and_jobs() -> dashboard.Dashboard:
    board = dashboard.Dashboard("InternVideo · Cluster and jobs").uid("internvideo-cluster-and-jobs") \
        .tags(["internvideo"]).refresh("10s").time("now-6h", "now").tooltip(1)
    board = variables(board, "internvideo_job_gpu_seconds_total")
    board = board.with_row(dashboard.Row("Jobs"))
    board = board.with_panel(graph("Jobs by state", "short", query("sum by (state) (internvideo_jobs)", "{{state}}")))
    board = board.with_panel(graph(
        "Queue wait", "s",
        query(f"histogram_quantile(0.5, sum by (le) (rate(internvideo_job_queue_wait_seconds_bucket[{WINDOW}])))", "p50"),
        query(f"histogram_quantile(0.95, sum by (le) (rate(internvideo_job_queue_wait_seconds_bucket[{WINDOW}])))", "p95"),
        description="Time from entering the queue (submitted or requeued) to starting."))
    board = board.with_panel(graph("Workers per job", "short", query(
        'sum by (job, component) (internvideo_job_workers{job=~"$job"})', "{{job}} {{component}}")))
    board = board.with_panel(graph(
        "Rescales and failures, by cause", "short",
        query("sum by (cause) (increase(internvideo_rescales_total[1h]))", "rescale: {{cause}}"),
        query("sum by (cause) (increase(internvideo_worker_failures_total[1h]))", "failure: {{cause}}")))
    board = board.with_row(dashboard.Row("Decoding"))
    decode = 'job=~"$job"'
    board = board.with_panel(graph(
        "Decode throughput", "short",
        query(rate("internvideo_decode_clips_total", "job", decode), "clips/s {{job}}"),
        query(rate("internvideo_decode_frames_total", "job", decode), "frames/s {{job}}")))
    board = board.with_panel(graph("Decode errors, by reason", "short", query(
        f"sum by (reason) (increase(internvideo_decode_errors_total{{{decode}}}[1h]))", "{{reason}}")))
    board = board.with_row(dashboard.Row("Nodes"))
    board = board.with_panel(graph("Node power (RAPL)", "watt", query(
        f"sum by (node, device) (rate(internvideo_node_energy_joules_total[{WINDOW}]))", "{{node}} {{device}}"),
        description="CPU packages and DRAM, read once per node."))
    return board


DASHBOARDS = {"training-efficiency.json": training_efficiency, "cluster-and-jobs.json": cluster_and_jobs}


# Fields the SDK writes on every variable that only interval variables use (auto*) or that repeat
# Grafana's default (allowCustomValue): left out, the dashboards also load in Grafana before 11.
_VARIABLE_DEFAULTS = ("auto", "auto_count", "auto_min", "allowCustomValue")


def render() -> dict[str, str]:
    """File name → the dashboard's JSON, its panels numbered in order (links to a panel use the id)."""
    out = {}
    for name, build in DASHBOARDS.items():
        board = json.loads(JSONEncoder(sort_keys=True).encode(build().build()))
        for number, panel in enumerate(board["panels"], start=1):
            panel["id"] = number
        for variable in board["templating"]["list"]:
            for key in _VARIABLE_DEFAULTS:
                variable.pop(key, None)
        out[name] = json.dumps(board, indent=2, sort_keys=True) + "\n"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        sys.exit(f"stale dashboards: {stale}; run python deploy/grafana/dashboards.py")


if __name__ == "__main__":
    main()
