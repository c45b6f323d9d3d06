"""``internvideo serve``: the coordinator process (gRPC API, scheduler, store, metrics)."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import ray
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.auth import AuthInterceptor
from coordinator.discovery import MetricsServer, ScrapeTargets
from coordinator.files import replace_text
from coordinator.runner import RunnerSettings
from coordinator.scheduler import Scheduler
from coordinator.service import MAX_WATCHES_PER_TOKEN, JobService
from coordinator.store import JobStore
from coordinator.tenancy import TokenStore, ensure_local_token
from internvideo.tasks.paths import PathPolicy
from protos.internvideo.v1 import jobs_pb2 as pb
from protos.internvideo.v1 import jobs_pb2_grpc as pb_grpc
from workers import telemetry

log = logging.getLogger(__name__)
RAY_START_ATTEMPTS = 3
DASHBOARD_START_ATTEMPTS = 2
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["JobService"].full_name
# The largest request (a recipe of inlined configs) is well under this; gRPC refuses a larger one
# with RESOURCE_EXHAUSTED before it is parsed.
MAX_MESSAGE_BYTES = 1024 * 1024
LOCAL_TOKEN_FILE = "client-token"  # in the state folder: the embedded default's admin token


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    state_dir: Path = Path("~/.internvideo").expanduser()
    ray_address: str | None = None  # None: start Ray in this process (the embedded default)
    num_cpus: int | None = None     # embedded Ray's logical CPUs (default: max(4, cores))
    start_timeout_s: float = 300.0
    worker_host: str | None = None  # where workers listen; default: the listen host embedded, each node's address on a cluster
    placement_timeout_s: float = 60.0
    # The embedded Ray's dashboard, on loopback only (its job API runs commands): 0 lets Ray pick
    # (8265, or the next free port); None: no dashboard.
    ray_dashboard_port: int | None = 0
    # TLS: the server's certificate chain and key (PEM files); with a client CA, clients must
    # present a certificate it signed (mutual TLS). None: plaintext (fine on loopback).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Where configs' paths may point: inputs under a data root or the tenant's folder of a storage
    # root (<root>/<tenant>), outputs under the latter, and never — confined or not — inside the
    # state folder (tokens, every tenant's checkpoints). No data roots: paths are not confined.
    data_roots: tuple[Path, ...] = ()
    storage_roots: tuple[Path, ...] = ()
    # Calls served at once (each watch stream holds one for its life); more are refused
    # (RESOURCE_EXHAUSTED) rather than queued. A token may hold at most max_watches_per_token streams.
    max_concurrent_rpcs: int = 1200
    max_watches_per_token: int = MAX_WATCHES_PER_TOKEN
    # On SIGTERM: how long running jobs get to checkpoint and release their workers before the
    # coordinator exits anyway (those not done resume from their last checkpoint at the next start).
    shutdown_timeout_s: float = 60.0

    def path_policy(self) -> PathPolicy:
        return PathPolicy.of(self.data_roots or None, self.storage_roots, private=(self.state_dir,))


def start_ray(options: ServeOptions) -> str:
    """Connect to (or start) Ray; returns the address of Ray's dashboard ("" without one)."""
    if options.ray_address:
        return ray.init(address=options.ray_address, namespace="internvideo", log_to_driver=False).dashboard_url or ""
    # Logical CPU slots, not cores: a trainer and a decode worker each hold one, and the
    # demo's 2 + 2 must fit on a 2-core laptop (they time-share the cores).
    num_cpus = options.num_cpus or max(4, os.cpu_count() or 1)
    # A GCS that runs binds its port at once (at most 0.26 s in 394 starts on the 2-core VM, under the
    # test suite's load); in 9 starts of 403 it wrote no log at all, and Ray waited out the whole wait
    # for its port (this was 60 s). The next try starts a new one. The same variable is every Ray
    # process's number of GCS connect attempts (~1 s apart), which inherit it: 20 keeps Ray's own.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "20")
    services = logging.getLogger("ray._private.services")
    dashboard_failures = 0
    # A dashboard that fails spends its own tries, not the ones a slow start needs.
    attempts = RAY_START_ATTEMPTS + (DASHBOARD_START_ATTEMPTS if options.ray_dashboard_port is not None else 0)
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        # The dashboard is a convenience, not part of the service: when its process will not come
        # up, the coordinator serves without it rather than not at all — and the last try, which
        # must not fail, is made without it once it has failed at all.
        dashboard = (options.ray_dashboard_port is not None and dashboard_failures < DASHBOARD_START_ATTEMPTS
                     and not (last and dashboard_failures))
        # Ray logs a failed start at ERROR (several lines) before raising; a start we retry is one
        # warning of ours instead, and only the last attempt's failure is shown in full.
        level = services.level
        if not last:
            services.setLevel(logging.CRITICAL)
        try:
            context = ray.init(num_cpus=num_cpus, namespace="internvideo", log_to_driver=False,
                               include_dashboard=dashboard, dashboard_host="127.0.0.1",
                               dashboard_port=options.ray_dashboard_port or None)
            if options.ray_dashboard_port is not None and not dashboard:
                log.warning("Ray's dashboard did not start; serving without it (failed tries: %d)", dashboard_failures)
            return context.dashboard_url or ""
        except ValueError as err:  # Ray's answer to a dashboard port someone else holds
            raise OSError(f"cannot serve Ray's dashboard: {err}") from None
        except Exception as err:  # noqa: BLE001 — Ray raises bare Exception/RuntimeError on slow starts
            # Start-up timeouts (GCS port file, raylet registration) pass on a second try; so does,
            # mostly, the dashboard process's abort at start (return code -6, before it writes any
            # log), about 1 start in 13 on a loaded 2-core machine.
            if last:
                raise
            dashboard_failures += failed_in_dashboard(err)
            log.warning("local Ray did not start (%s); trying again", (str(err).strip() or type(err).__name__).splitlines()[-1])
            ray.shutdown()
            time.sleep(1.0)  # let the failed start's processes exit before the next one starts
        finally:
            services.setLevel(level)


def failed_in_dashboard(err: BaseException) -> bool:
    return any(frame.name == "start_api_server" for frame in traceback.extract_tb(err.__traceback__))


def cluster_resources() -> dict[str, float]:
    totals: dict[str, float] = {}
    for node in ray.nodes():
        if node["Alive"]:
            for key in ("CPU", "GPU"):
                totals[key] = totals.get(key, 0.0) + node["Resources"].get(key, 0.0)
    return totals


def available_resources() -> dict[str, float]:
    """CPUs and GPUs Ray reports free now, over the whole cluster (whoever holds the rest)."""
    available = ray.available_resources()
    return {key: available.get(key, 0.0) for key in ("CPU", "GPU")}


def trainer_bundle() -> dict[str, float]:
    """One GPU per trainer on a GPU cluster; one CPU slot per trainer on the CPU-only default."""
    return {"GPU": 1.0, "CPU": 1.0} if cluster_resources().get("GPU") else {"CPU": 1.0}


def server_credentials(options: ServeOptions) -> grpc.ServerCredentials | None:
    if options.tls_cert is None and options.tls_key is None:
        if options.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    client_ca = options.tls_client_ca.read_bytes() if options.tls_client_ca else None
    return grpc.ssl_server_credentials([(options.tls_key.read_bytes(), options.tls_cert.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


def bind_server(options: ServeOptions, tokens: TokenStore) -> tuple[grpc.Server, int]:
    """Create the gRPC server and take its port first: a taken port fails before anything starts."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.max_concurrent_rpcs),
                         interceptors=[AuthInterceptor(tokens.authenticate)],
                         maximum_concurrent_rpcs=options.max_concurrent_rpcs,
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    address = f"{options.host}:{options.port}"
    credentials = server_credentials(options)
    if credentials is None and options.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without TLS: bearer tokens cross the network in the clear (--tls-cert)", address)
    try:
        bound = (server.add_secure_port(address, credentials) if credentials
                 else server.add_insecure_port(address))
    except RuntimeError as err:
        raise OSError(f"cannot listen on {address}: {err}") from None
    return server, bound


def add_services(server: grpc.Server, service: JobService) -> health.HealthServicer:
    pb_grpc.add_JobServiceServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    return health_servicer


def serve(options: ServeOptions) -> int:
    options.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # its database holds every tenant's jobs
    store = JobStore(options.state_dir / "jobs.sqlite")
    tokens = TokenStore(store.path)
    ensure_local_token(tokens, options.state_dir / LOCAL_TOKEN_FILE)
    server, port = bind_server(options, tokens)
    metrics_server = MetricsServer(store, options.host, options.metrics_port)
    metrics_port = metrics_server.port
    ray_dashboard = start_ray(options)
    # Embedded, every worker runs on this machine: their servers listen where the coordinator does.
    settings = RunnerSettings(state_dir=options.state_dir, trainer_bundle=trainer_bundle(),
                              start_timeout_s=options.start_timeout_s, placement_timeout_s=options.placement_timeout_s,
                              worker_host=options.worker_host or (None if options.ray_address else options.host))
    targets = ScrapeTargets(options.state_dir / "prometheus" / "targets.json",
                            f"{telemetry.reachable(options.host)}:{metrics_port}")
    metrics_server.targets = targets
    scheduler = Scheduler(store, settings, cluster_resources, scrape_targets=targets, quota=tokens.quota,
                          available_resources=available_resources)
    scheduler.start()
    health_servicer = add_services(server, JobService(store, scheduler, tokens, paths=options.path_policy(),
                                                      ray_dashboard=ray_dashboard,
                                                      max_watches_per_token=options.max_watches_per_token))
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # Where to find this coordinator (ports may have been picked by the OS with port 0).
    endpoints = options.state_dir / "coordinator.json"
    replace_text(endpoints, json.dumps({"grpc": f"{options.host}:{port}", "metrics": f"{options.host}:{metrics_port}",
                                        "ray_dashboard": ray_dashboard, "pid": os.getpid(),
                                        "token_file": str(options.state_dir / LOCAL_TOKEN_FILE),
                                        "tls": options.tls_cert is not None}))
    log.info("serving on %s:%d (metrics on :%d, state in %s, trainers use %s)",
             options.host, port, metrics_port, options.state_dir, settings.trainer_bundle)
    print(f"internvideo coordinator listening on {options.host}:{port}; metrics on {options.host}:{metrics_port}"
          + (f"; Ray dashboard on http://{ray_dashboard}" if ray_dashboard else ""), flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down: running jobs checkpoint and go back to the queue (at most %.0fs)",
             options.shutdown_timeout_s)
    endpoints.unlink(missing_ok=True)
    health_servicer.enter_graceful_shutdown()
    stopped = server.stop(grace=5)  # new calls are refused now; watch streams end with the grace
    unfinished = scheduler.stop(options.shutdown_timeout_s)
    if unfinished:
        log.warning("jobs %s did not checkpoint in %.0fs; they resume from their last checkpoint at the next start",
                    ", ".join(unfinished), options.shutdown_timeout_s)
    stopped.wait()
    metrics_server.close()
    store.close()
    ray.shutdown()
    return 0
