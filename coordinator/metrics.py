"""The coordinator's metrics (jobs by state, read from the store at scrape time) and the
Prometheus file-based service discovery of every worker's /metrics endpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.state import JobState
from coordinator.store import JobStore


class JobsCollector(Collector):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("internvideo_jobs", "Jobs by state", labels=["state"])
        counts = self.store.count_by_state()
        for state in JobState:
            gauge.add_metric([state.value], counts.get(state, 0))
        yield gauge
        # Sizes as of each running job's last step: an autoscaled decode pool shows here.
        workers = GaugeMetricFamily("internvideo_job_workers", "Workers of each running job, by component",
                                    labels=["job", "component"])
        running, after, page = [], 0, 500
        while True:
            jobs, after = self.store.list_jobs(states=[JobState.RUNNING], after_rowid=after, limit=page)
            running += jobs
            if len(jobs) < page:
                break
        for job in running:
            if job.progress:
                workers.add_metric([job.job_id, "trainer"], job.progress["world_size"])
                workers.add_metric([job.job_id, "decode"], job.progress["decode_workers"])
        yield workers


def serve_coordinator_metrics(store: JobStore, host: str, port: int) -> int:
    """Serve /metrics for the coordinator; returns the bound port (``port`` 0 picks one)."""
    registry = CollectorRegistry()
    registry.register(JobsCollector(store))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_port


class ScrapeTargets:
    """Writes a Prometheus ``file_sd_configs`` file listing every live /metrics endpoint.

    Worker actors listen on ports chosen at start-up, so Prometheus cannot be configured
    with them in advance: it watches this file instead (deploy/prometheus/prometheus.yml).
    """

    def __init__(self, path: Path, coordinator_endpoint: str) -> None:
        self.path = path
        self.coordinator_endpoint = coordinator_endpoint
        self._written: list | None = None

    def update(self, jobs: dict[str, dict[str, list[str]]]) -> None:
        """``jobs``: job id → {"trainer": [host:port, ...], "decode": [...]}; rewrites only on change."""
        groups = [{"targets": [self.coordinator_endpoint], "labels": {"component": "coordinator"}}]
        for job_id, components in sorted(jobs.items()):
            for component, endpoints in sorted(components.items()):
                if endpoints:
                    groups.append({"targets": sorted(endpoints), "labels": {"component": component, "job_id": job_id}})
        if groups == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        os.replace(tmp, self.path)  # Prometheus must never read a half-written file
        self._written = groups
