"""The coordinator's metrics endpoint: /metrics, and /targets for Prometheus' HTTP service discovery."""
from __future__ import annotations

import ipaddress
import json
import socket
import urllib.request
from pathlib import Path

import pytest

from coordinator.discovery import MetricsServer, ScrapeTargets
from coordinator.store import JobStore


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_targets_and_metrics_are_served_and_a_closed_server_frees_its_collector(host: str, tmp_path: Path) -> None:
    if ":" in host and not ipv6_available():
        pytest.skip("no IPv6 loopback on this machine")
    for attempt in range(2):  # the second server registers its collectors again: the first unregistered
        server = MetricsServer(JobStore(tmp_path / f"jobs-{attempt}.sqlite"), host, 0)
        base = f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"
        try:
            assert json.loads(urllib.request.urlopen(f"{base}/targets", timeout=10).read()) == []
            server.targets = ScrapeTargets(tmp_path / "targets.json", f"{host}:{server.port}")
            server.targets.update({"job-1": {"trainer": ["10.0.0.2:9000"], "decode": []}})
            served = json.loads(urllib.request.urlopen(f"{base}/targets", timeout=10).read())
            assert served == json.loads((tmp_path / "targets.json").read_text()) == [
                {"targets": [f"{host}:{server.port}"], "labels": {"component": "coordinator"}},
                {"targets": ["10.0.0.2:9000"], "labels": {"component": "trainer", "job_id": "job-1"}}]
            metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
            assert 'internvideo_jobs{state="QUEUED"} 0.0' in metrics
        finally:
            server.close()


def test_a_server_on_every_interface_is_listed_at_its_nodes_address(monkeypatch) -> None:
    """The address advertised for a listen address: a pure mapping of strings. No server is started and
    no socket opened (any would fail this test); the unspecified addresses are only the input."""
    from workers import telemetry

    def no_socket(*args, **kwargs):
        raise AssertionError("reachable() opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(telemetry, "node_address", lambda: "10.1.2.3")
    every_interface = [str(ipaddress.IPv4Address(0)), str(ipaddress.IPv6Address(0)), ""]
    assert [telemetry.reachable(host) for host in [*every_interface, "127.0.0.1", "10.9.9.9"]] == [
        "10.1.2.3", "10.1.2.3", "10.1.2.3", "127.0.0.1", "10.9.9.9"]
