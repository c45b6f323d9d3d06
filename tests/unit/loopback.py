"""The coordinator's gRPC service on loopback over a store, without Ray: what a call does to the
records, end to end through the wire format, in a unit test's time."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from coordinator.client import JobClient
from coordinator.runner import RunnerSettings
from coordinator.scheduler import Scheduler
from coordinator.server import ServeOptions, add_services, bind_server
from coordinator.service import JobService
from coordinator.store import JobStore
from coordinator.tenancy import Role, TokenStore


@contextlib.contextmanager
def serving(store: JobStore, state_dir: Path, watch_poll_s: float = 5.0) -> Iterator[JobClient]:
    """A real gRPC server on 127.0.0.1 serving ``store``'s jobs (its scheduler never started: jobs stay
    queued), and a member's client of it."""
    tokens = TokenStore(store.path)
    token = tokens.create("local", Role.MEMBER, "test")[1]
    scheduler = Scheduler(store, RunnerSettings(state_dir=state_dir, trainer_bundle={"CPU": 1.0}), lambda: {})
    server, port = bind_server(ServeOptions(port=0), tokens)
    add_services(server, JobService(store, scheduler, tokens, watch_poll_s=watch_poll_s))
    server.start()
    try:
        with JobClient(f"127.0.0.1:{port}", token=token) as client:
            yield client
    finally:
        server.stop(grace=None)
        tokens.close()
