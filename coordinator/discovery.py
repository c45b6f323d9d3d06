"""Where Prometheus finds the coordinator's and every worker's /metrics: the targets file (file-based
service discovery) and the coordinator's HTTP endpoint, which serves its metrics and the same
targets for HTTP service discovery (``http_sd_configs``)."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from coordinator.files import replace_text
from coordinator.metrics import REGISTRY, JobsCollector
from coordinator.store import JobStore
from workers.energy import export_node_energy


class MetricsServer:
    """The coordinator's HTTP endpoint: ``/metrics``, and ``/targets`` — every live /metrics endpoint
    in Prometheus' HTTP service-discovery format (``http_sd_configs``), for clusters where Prometheus
    cannot read the coordinator's targets file (KubeRay: deploy/prometheus/kuberay/)."""

    def __init__(self, store: JobStore, host: str, port: int) -> None:
        """``port`` 0 picks a free one (see ``port``)."""
        self._jobs = JobsCollector(store)
        REGISTRY.register(self._jobs)
        export_node_energy(host, REGISTRY)
        self.targets: ScrapeTargets | None = None  # set once the scheduler's targets exist
        metrics = make_wsgi_app(REGISTRY)

        def app(environ: dict, start_response: Callable) -> list[bytes]:
            if environ.get("PATH_INFO") == "/targets":
                body = json.dumps(self.targets.groups if self.targets else []).encode()
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                return [body]
            return metrics(environ, start_response)

        server = _IPv6Server if ":" in host else ThreadingWSGIServer  # an IPv6 literal, such as "::"
        self._httpd = make_server(host, port, app, server, handler_class=_QuietHandler)
        self.port = self._httpd.server_port
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="metrics-http").start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        REGISTRY.unregister(self._jobs)


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — the base class's name
        pass  # a scrape every few seconds is not news


class ScrapeTargets:
    """Writes a Prometheus ``file_sd_configs`` file listing every live /metrics endpoint.

    Worker actors listen on ports chosen at start-up, so Prometheus cannot be configured
    with them in advance: it watches this file instead (deploy/prometheus/prometheus.yml).
    """

    def __init__(self, path: Path, coordinator_endpoint: str) -> None:
        self.path = path
        self.coordinator_endpoint = coordinator_endpoint
        self.groups: list[dict] = [{"targets": [coordinator_endpoint], "labels": {"component": "coordinator"}}]
        self._written: list | None = None

    def update(self, jobs: dict[str, dict[str, list[str]]]) -> None:
        """``jobs``: job id → {"trainer": [host:port, ...], "decode": [...]}; rewrites only on change."""
        groups = [{"targets": [self.coordinator_endpoint], "labels": {"component": "coordinator"}}]
        for job_id, components in sorted(jobs.items()):
            for component, endpoints in sorted(components.items()):
                if endpoints:
                    groups.append({"targets": sorted(endpoints), "labels": {"component": component, "job_id": job_id}})
        self.groups = groups
        if groups == self._written:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_text(self.path, json.dumps(groups, indent=1))
        self._written = groups
