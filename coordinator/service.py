"""JobService: translates gRPC requests into store/scheduler calls and errors into status codes."""
from __future__ import annotations

from typing import Iterator

import grpc
import ray

from coordinator import convert
from coordinator.efficiency import job_efficiency
from coordinator.recipe import plan_recipe
from coordinator.scheduler import Scheduler
from coordinator.state import InvalidTransition, JobState
from coordinator.store import JobNotFound, JobStore
from coordinator.submission import InvalidSubmission, validate_submission
from protos.internvideo.v1 import jobs_pb2 as pb
from protos.internvideo.v1 import jobs_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class JobService(pb_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, scheduler: Scheduler, watch_poll_s: float = 1.0, ray_dashboard: str = "") -> None:
        self.store, self.scheduler, self.ray_dashboard = store, scheduler, ray_dashboard
        self.watch_poll_s = watch_poll_s

    def _job(self, job_id: str, context: grpc.ServicerContext) -> pb.Job:
        try:
            job = self.store.get_job(job_id)
        except JobNotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {job_id!r}")
        return convert.job_to_proto(job, self.store.checkpoints(job_id), self.store.skipped_videos(job_id))

    def _job_state(self, job_id: str) -> JobState | None:
        try:
            return self.store.get_job(job_id).state
        except JobNotFound:
            return None

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.Job:
        try:
            spec = validate_submission(
                kind=request.kind, config_text=request.config_yaml, overrides=list(request.overrides),
                # proto3 cannot tell "unset" from 0: an unset min_workers takes its documented default, 1.
                min_workers=request.min_workers or 1, max_workers=request.max_workers, priority=request.priority,
                name=request.name, request_id=request.request_id, job_state=self._job_state)
        except InvalidSubmission as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        job, created = self.store.create_job(spec)
        if created:
            self.scheduler.wake()
        return self._job(job.job_id, context)

    def SubmitRecipe(self, request: pb.SubmitRecipeRequest, context: grpc.ServicerContext) -> pb.SubmitRecipeResponse:
        try:
            specs = plan_recipe(request.recipe_yaml, list(request.overrides), job_state=self._job_state,
                                priority=request.priority, request_id=request.request_id)
        except InvalidSubmission as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        jobs, created = self.store.create_jobs(specs)
        if created:
            self.scheduler.wake()
        return pb.SubmitRecipeResponse(jobs=[self._job(job.job_id, context) for job in jobs])

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self._job(request.job_id, context)

    def GetJobEfficiency(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.JobEfficiency:
        try:
            job = self.store.get_job(request.job_id)
        except JobNotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")
        _, usage = self.store.usage([job.job_id]).get(job.job_id, ("", None))
        efficiency = job_efficiency(self.store.events_after(job.job_id, 0), usage,
                                    (job.config.get("train") or {}).get("global_batch"))
        return convert.efficiency_to_proto(job.job_id, efficiency)

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        try:
            after = int(request.page_token) if request.page_token else 0
            states = [convert.state_from_proto(s) for s in request.states]
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_token or states: {err}")
        limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        jobs, last = self.store.list_jobs(states=states, kinds=request.kinds, after_rowid=after, limit=limit)
        return pb.ListJobsResponse(
            jobs=[convert.job_to_proto(j, self.store.checkpoints(j.job_id), self.store.skipped_videos(j.job_id))
                  for j in jobs],
            next_page_token=str(last) if len(jobs) == limit else "")

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        try:
            self.scheduler.cancel(request.job_id)
        except JobNotFound:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")
        except InvalidTransition as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        return self._job(request.job_id, context)

    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        seq = request.after_seq
        while context.is_active():
            try:
                events = self.store.events_after(request.job_id, seq)
            except JobNotFound:
                context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")
            for event in events:
                yield convert.event_to_proto(event)
                seq = event.seq
            if request.history_only or (not events and self.store.get_job(request.job_id).state.terminal):
                return
            if not events:
                with self.store.changed:
                    self.store.changed.wait(self.watch_poll_s)

    def GetClusterStatus(self, request: pb.GetClusterStatusRequest,
                         context: grpc.ServicerContext) -> pb.ClusterStatus:
        nodes = [pb.Node(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""), alive=n["Alive"],
                         total={k: float(v) for k, v in n.get("Resources", {}).items()
                                if k in ("CPU", "GPU", "memory")})
                 for n in ray.nodes()]
        bundle = self.scheduler.settings.trainer_bundle
        resource = "GPU" if bundle.get("GPU") else "CPU"
        total, free = self.scheduler.cluster_resources(), self.scheduler.free_resources()
        jobs = [pb.JobPlacement(job_id=r.job_id, trainer_workers=r.world_size, decode_workers=r.decode_workers,
                                metrics_endpoints=[e for es in r.metrics_endpoints.values() for e in es])
                for r in self.scheduler.active_runners()]
        return pb.ClusterStatus(
            nodes=nodes, trainer_resource=resource, jobs=jobs, ray_dashboard=self.ray_dashboard,
            trainer_slots_total=total.get(resource, 0.0) / bundle[resource],
            trainer_slots_free=max(0.0, free.get(resource, 0.0)) / bundle[resource],
            total={k: v for k, v in total.items() if k in ("CPU", "GPU")},
            free={k: v for k, v in free.items() if k in ("CPU", "GPU")})
