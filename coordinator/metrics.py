"""The coordinator's own metrics: jobs by state, read from the store at scrape time."""
from __future__ import annotations

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


def serve_coordinator_metrics(store: JobStore, host: str, port: int) -> int:
    """Serve /metrics for the coordinator; returns the bound port (``port`` 0 picks one)."""
    registry = CollectorRegistry()
    registry.register(JobsCollector(store))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_port
