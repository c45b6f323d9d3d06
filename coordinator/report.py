"""A job's results and efficiency report, for people without Grafana: its numbers as tables
(``internvideo results``); its efficiency as a table in the terminal, and with
``--out DIR`` PNG plots of loss, throughput, power and goodput over the job's steps, and one
self-contained HTML page holding the table and the plots (``index.html``).

Everything comes over the API: ``GetJobEfficiency`` for the figures, the job's event history for
the curves (each progress event carries the step's time, clips, joules and the job's GPU-time so far).
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

from protos.internvideo.v1 import jobs_pb2 as pb

# figure → (label, unit, scale): what the table prints and how.
FIGURES: dict[str, tuple[str, str, float]] = {
    "gpu_hours": ("GPU-hours", "h", 1.0),
    "goodput": ("goodput (kept / held GPU-time)", "%", 100.0),
    "joules": ("energy", "J", 1.0),
    "productive_joules": ("energy of kept steps", "J", 1.0),
    "joules_per_clip": ("energy per clip", "J", 1.0),
    "watts_per_device": ("mean power per device", "W", 1.0),
    "mfu": ("model FLOPs utilisation", "%", 100.0),
    "flop_per_joule": ("model FLOP per joule", "FLOP/J", 1.0),
    "data_wait_fraction": ("data-wait fraction", "%", 100.0),
    "step_seconds_p50": ("step time p50", "s", 1.0),
    "step_seconds_p95": ("step time p95", "s", 1.0),
    "clips_per_second": ("throughput", "clips/s", 1.0),
}


@dataclass(frozen=True)
class Curve:
    title: str
    unit: str
    steps: list[int]
    values: list[float]


def efficiency_rows(efficiency: pb.JobEfficiency) -> list[tuple[str, str]]:
    """(label, value with unit) for every figure; unknown ones say so, and energy says its source."""
    sources = ", ".join(efficiency.energy_sources) or "none"
    estimated = " (estimated)" if "estimate" in efficiency.energy_sources else ""
    rows = []
    for name, (label, unit, scale) in FIGURES.items():
        if name in efficiency.figures:
            value = f"{efficiency.figures[name] * scale:.4g} {unit}"
            if "joule" in name or name.startswith("watts"):
                value += estimated
        else:
            value = f"unknown (peak: {efficiency.peak})" if name == "mfu" else "unknown"
        rows.append((label, value))
    rows.append(("energy source", sources))
    rows.append(("MFU peak from", efficiency.peak))
    lost = sorted(efficiency.lost_gpu_seconds.items(), key=lambda kv: -kv[1])
    rows.append(("GPU-time lost, by use", ", ".join(f"{use} {s:.1f}s" for use, s in lost if s > 0) or "none"))
    return rows


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def jobs_table(named: list[tuple[str, pb.JobEfficiency]]) -> str:
    """One line per job: GPU-time, goodput, energy and its source, energy per clip, MFU, data wait."""
    def figure(e: pb.JobEfficiency, name: str, fmt: str, scale: float = 1.0) -> str:
        return format(e.figures[name] * scale, fmt) if name in e.figures else "unknown"

    rows = [("job", "GPU-s", "goodput", "joules", "J/clip", "MFU", "data wait", "energy from")]
    for name, e in named:
        rows.append((name, figure(e, "gpu_hours", ".1f", 3600.0), figure(e, "goodput", ".1%"),
                     figure(e, "joules", ".4g"), figure(e, "joules_per_clip", ".3g"), figure(e, "mfu", ".2%"),
                     figure(e, "data_wait_fraction", ".1%"), ", ".join(e.energy_sources) or "none"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def results_text(job: pb.Job) -> str:
    """A job's numbers as tables: an evaluation's metrics and what is not one number (a table per
    class, a confusion matrix); a training job's validation and final step metrics."""
    details = json.loads(job.result.details_json) if job.result.details_json else {}
    metrics = details.get("metrics") or {k: v for k, v in job.result.metrics.items() if k.startswith(("val_", "final_"))}
    if not metrics:
        return "no results yet"
    parts = [table([(name, f"{value:.4g}") for name, value in sorted(metrics.items())])]
    for name, value in details.items():
        if name == "metrics":
            continue
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            parts.append(f"{name}:\n" + table([(str(k), "n/a" if v is None else f"{v:.4g}" if isinstance(v, float)
                                               else str(v)) for k, v in value.items()]))
        elif isinstance(value, list) and value and all(isinstance(row, list) for row in value):
            width = max(len(str(cell)) for row in value for cell in row)
            parts.append(f"{name}:\n" + "\n".join(" ".join(str(c).rjust(width) for c in row) for row in value))
        else:
            parts.append(f"{name}: {json.dumps(value)}")
    return "\n\n".join(parts)


def curves(events: list[pb.JobEvent]) -> list[Curve]:
    steps = [e.progress for e in events if e.WhichOneof("body") == "progress"]
    x = [p.step for p in steps]
    return [
        Curve("Loss", "", x, [p.metrics.get("loss", p.loss) for p in steps]),
        Curve("Throughput", "clips/s", x, [p.clips_per_second for p in steps]),
        Curve("Power of the trainers' devices", "W", x,
              [p.step_joules / p.step_seconds if p.step_seconds else 0.0 for p in steps]),
        Curve("Goodput so far", "%", x,
              [100.0 * p.kept_gpu_seconds / p.held_gpu_seconds if p.held_gpu_seconds else 0.0 for p in steps]),
    ]


def plot(curve: Curve, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    axes.plot(curve.steps, curve.values, marker="." if len(curve.steps) < 50 else None)
    axes.set_title(curve.title)
    axes.set_xlabel("step")
    axes.set_ylabel(curve.unit)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(out: Path, job: pb.Job, efficiency: pb.JobEfficiency, events: list[pb.JobEvent]) -> Path:
    """PNG plots and ``index.html`` (the table and the plots inlined) in ``out``; returns the page."""
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for curve in curves(events):
        path = plot(curve, out / (curve.title.split()[0].lower() + ".png"))
        images.append((curve.title, base64.b64encode(path.read_bytes()).decode()))
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
                   for label, value in efficiency_rows(efficiency))
    figures = "".join(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(title)}</figcaption></figure>" for title, data in images)
    state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
    page = out / "index.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(job.name)}: efficiency</title>
<style>body{{font-family:sans-serif;margin:2em}} th{{text-align:left;padding-right:2em}}
figure{{display:inline-block;margin:1em}}</style></head>
<body><h1>{html.escape(job.name)} <small>({html.escape(job.kind)}, {html.escape(job.job_id)}, {state})</small></h1>
<table id="efficiency">{rows}</table>
<div id="plots">{figures}</div>
</body></html>
""")
    return page
