"""The coordinator's metrics: jobs by state and each job's GPU-time and energy by use, read from the
store at scrape time; rescales, worker failures, queue waits and running jobs' own metrics, as they
happen. ``coordinator.discovery`` serves them and tells Prometheus where the workers' are."""
from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.state import JobState
from coordinator.store import JobStore
from coordinator.usage import USES

REGISTRY = CollectorRegistry()  # the coordinator's own: its /metrics serves nothing else

RESCALE_CAUSES = ("grow", "failure", "no_room")
RESCALES = Counter("internvideo_rescales", "Jobs restarted at another world size, by cause", ["cause"],
                   registry=REGISTRY)
FAILURE_CAUSES = ("worker_lost", "timeout", "data", "error")
WORKER_FAILURES = Counter("internvideo_worker_failures", "Failed attempts of jobs' worker groups, by cause",
                          ["cause"], registry=REGISTRY)
QUEUE_WAIT = Histogram("internvideo_job_queue_wait_seconds", "Time a job waited in the queue before it started",
                       registry=REGISTRY, buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
STEP_METRIC = Gauge("internvideo_job_train_metric", "A running job's step metrics as its kind names them (loss, "
                    "lr, grad_norm, accuracy, ...), averaged over ranks", ["job", "kind", "name"], registry=REGISTRY)
VALIDATION_METRIC = Gauge("internvideo_job_validation_metric", "A running job's metrics on its held-out set, at its "
                          "last validation", ["job", "kind", "name"], registry=REGISTRY)
for cause in RESCALE_CAUSES:  # every cause is a series from the start: a rate over none is 0, not missing
    RESCALES.labels(cause=cause)
for cause in FAILURE_CAUSES:
    WORKER_FAILURES.labels(cause=cause)

# Jobs whose GPU-time is exported: those updated in the last day (a finished job's series end then).
USAGE_WINDOW_S = 24 * 3600.0


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
        yield from self._usage()

    def _usage(self) -> Iterator[Metric]:
        held = CounterMetricFamily("internvideo_job_gpu_seconds", "GPU-seconds a job's trainers were held",
                                   labels=["job", "kind"])
        by_use = CounterMetricFamily("internvideo_job_use_gpu_seconds", "A job's GPU-seconds by use (kept: goodput)",
                                     labels=["job", "kind", "use"])
        energy = CounterMetricFamily("internvideo_job_energy_joules", "Energy of a job's trainers' devices by use",
                                     labels=["job", "kind", "use"])
        for job_id, (kind, usage) in self.store.usage(updated_since=time.time() - USAGE_WINDOW_S).items():
            held.add_metric([job_id, kind], usage.held_gpu_seconds)
            for use in USES:
                by_use.add_metric([job_id, kind, use], usage.of(use).gpu_seconds)
                energy.add_metric([job_id, kind, use], usage.of(use).joules)
        yield from (held, by_use, energy)
