"""JobService: translates gRPC requests into store/scheduler calls and errors into status codes.

Every handler gets the caller's ``Principal`` on its context (``coordinator.auth``). A job of
another tenant is answered exactly as a job that does not exist (NOT_FOUND), so ids reveal nothing.
"""
from __future__ import annotations

import os
from typing import Iterator, NoReturn

import grpc
import ray

from coordinator import convert
from coordinator.auth import CallContext, StreamLimit
from coordinator.efficiency import job_efficiency
from coordinator.recipe import plan_recipe
from coordinator.scheduler import Scheduler
from coordinator.state import InvalidTransition, JobState
from coordinator.store import JobNotFound, JobRecord, JobSpec, JobStore, QueueFull
from coordinator.submission import InvalidSubmission, PathNotAllowed, SubmissionContext, validate_submission
from coordinator.tenancy import Principal, Quota, Role, TokenStore
from internvideo.tasks.paths import PathPolicy
from protos.internvideo.v1 import jobs_pb2 as pb
from protos.internvideo.v1 import jobs_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_WATCHES_PER_TOKEN = 64


class JobService(pb_grpc.JobServiceServicer):
    def __init__(self, store: JobStore, scheduler: Scheduler, tokens: TokenStore, *,
                 paths: PathPolicy = PathPolicy.of(None), watch_poll_s: float = 5.0, ray_dashboard: str = "",
                 max_watches_per_token: int = MAX_WATCHES_PER_TOKEN) -> None:
        self.store, self.scheduler, self.tokens, self.paths = store, scheduler, tokens, paths
        self.jobs_folder = os.path.realpath(scheduler.settings.job_dir(""))
        self.ray_dashboard, self.watch_poll_s = ray_dashboard, watch_poll_s
        self.watches = StreamLimit(max_watches_per_token)

    @staticmethod
    def _not_found(job_id: str, context: CallContext) -> NoReturn:
        context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {job_id!r}")

    def _visible(self, job_id: str, context: CallContext) -> JobRecord:
        """The job, if the caller may see it; NOT_FOUND otherwise, the same as for no job at all."""
        try:
            job = self.store.get_job(job_id)
        except JobNotFound:
            self._not_found(job_id, context)
        if not context.principal.sees(job.tenant):
            self._not_found(job_id, context)
        return job

    def _job(self, job_id: str, context: CallContext) -> pb.Job:
        job = self._visible(job_id, context)
        return convert.job_to_proto(job, self.store.checkpoints(job_id), self.store.skipped_videos(job_id))

    def _submission_context(self, principal: Principal) -> SubmissionContext:
        def job_state(job_id: str) -> JobState | None:  # a job a config starts from: the tenant's own only
            try:
                job = self.store.get_job(job_id)
            except JobNotFound:
                return None
            return job.state if job.tenant == principal.tenant else None

        def own_job_folder(resolved: str) -> bool:  # <state>/jobs/<id>/... of one of the tenant's jobs
            relative = os.path.relpath(resolved, self.jobs_folder)
            return not relative.startswith(os.pardir) and job_state(relative.split(os.sep)[0]) is not None

        return SubmissionContext(tenant=principal.tenant, job_state=job_state,
                                 paths=self.paths.for_tenant(principal.tenant, readable=own_job_folder))

    def _tenant_quota(self, priority: int, context: CallContext) -> Quota:
        """The caller's tenant's quota, once the priority asked for is within it: priority preempts
        other tenants' jobs, so above its tenant's maximum only an admin may ask for it."""
        principal = context.principal
        quota = self.tokens.quota(principal.tenant)
        if principal.role is not Role.ADMIN and priority > quota.max_priority:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"priority: {priority} is above tenant {principal.tenant}'s maximum of {quota.max_priority} "
                          f"(an admin raises it: internvideo quota set {principal.tenant} --max-priority N)")
        return quota

    def _store(self, specs: list[JobSpec], quota: Quota, context: CallContext) -> list[JobRecord]:
        try:
            jobs, created = self.store.create_jobs(specs, quota.max_queued_jobs)
        except QueueFull as err:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        if created:
            self.scheduler.wake()
        return jobs

    @staticmethod
    def _refuse(err: InvalidSubmission, context: CallContext) -> None:
        denied = isinstance(err, PathNotAllowed)
        code = grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.INVALID_ARGUMENT
        context.abort(code, str(err))

    def SubmitJob(self, request: pb.SubmitJobRequest, context: CallContext) -> pb.Job:
        quota = self._tenant_quota(request.priority, context)
        try:
            spec = validate_submission(
                kind=request.kind, config_text=request.config_yaml, overrides=list(request.overrides),
                # proto3 cannot tell "unset" from 0: an unset min_workers takes its documented default, 1.
                min_workers=request.min_workers or 1, max_workers=request.max_workers, priority=request.priority,
                name=request.name, request_id=request.request_id,
                context=self._submission_context(context.principal))
        except InvalidSubmission as err:
            self._refuse(err, context)
        (job,) = self._store([spec], quota, context)
        return self._job(job.job_id, context)

    def SubmitRecipe(self, request: pb.SubmitRecipeRequest, context: CallContext) -> pb.SubmitRecipeResponse:
        quota = self._tenant_quota(request.priority, context)
        try:
            specs = plan_recipe(request.recipe_yaml, list(request.overrides),
                                context=self._submission_context(context.principal),
                                priority=request.priority, request_id=request.request_id)
        except InvalidSubmission as err:
            self._refuse(err, context)
        jobs = self._store(specs, quota, context)
        return pb.SubmitRecipeResponse(jobs=[self._job(job.job_id, context) for job in jobs])

    def GetJob(self, request: pb.GetJobRequest, context: CallContext) -> pb.Job:
        return self._job(request.job_id, context)

    def GetJobEfficiency(self, request: pb.GetJobRequest, context: CallContext) -> pb.JobEfficiency:
        job = self._visible(request.job_id, context)
        _, usage = self.store.usage([job.job_id]).get(job.job_id, ("", None))
        efficiency = job_efficiency(self.store.totals(job.job_id), usage,
                                    (job.config.get("train") or {}).get("global_batch"))
        return convert.efficiency_to_proto(job.job_id, efficiency)

    def ListJobs(self, request: pb.ListJobsRequest, context: CallContext) -> pb.ListJobsResponse:
        try:
            after = int(request.page_token) if request.page_token else 0
            states = [convert.state_from_proto(s) for s in request.states]
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_token or states: {err}")
        if request.page_size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"page_size: must be ≥ 0, got {request.page_size}")
        limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        jobs, last = self.store.list_jobs(states=states, kinds=request.kinds, after_rowid=after, limit=limit,
                                          tenant=context.principal.tenant_filter)
        return pb.ListJobsResponse(
            jobs=[convert.job_to_proto(j, self.store.checkpoints(j.job_id), self.store.skipped_videos(j.job_id))
                  for j in jobs],
            next_page_token=str(last) if len(jobs) == limit else "")

    def CancelJob(self, request: pb.CancelJobRequest, context: CallContext) -> pb.Job:
        self._visible(request.job_id, context)
        # A running job is given until shortly before the caller's deadline to release its workers.
        remaining = context.time_remaining()
        try:
            wait_s = 30.0 if remaining is None else min(30.0, max(0.0, remaining - 1))
            self.scheduler.cancel(request.job_id, wait_s=wait_s)
        except InvalidTransition as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        return self._job(request.job_id, context)

    def WatchJob(self, request: pb.WatchJobRequest, context: CallContext) -> Iterator[pb.JobEvent]:
        self._visible(request.job_id, context)
        token_id = context.principal.token_id
        if not self.watches.acquire(token_id):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"this token has {self.watches.per_token} watch streams open, the most it may")
        try:
            yield from self._events(request, context)
        finally:
            self.watches.release(token_id)

    def _events(self, request: pb.WatchJobRequest, context: CallContext) -> Iterator[pb.JobEvent]:
        # A client may ask for events after one that does not exist yet: what wakes it is the job's next
        # event, whatever its number. Clamped before anything is read: an event written after the clamp has
        # a higher seq, so the replay or the wait below finds it.
        seq = min(request.after_seq, self.store.newest_seq(request.job_id))
        while True:
            # Read before the events: a job that had ended by then has its last event among them.
            ended = self.store.get_job(request.job_id).state.terminal
            # A page at a time: a long history streams from its first page, in a page's memory.
            for event in self.store.replay(request.job_id, seq):
                yield convert.event_to_proto(event)
                seq = event.seq
            if request.history_only or ended:
                return
            if self.store.get_job(request.job_id).state.terminal:
                continue  # it ended since the state read: no event follows its last, sent or sent next pass
            # Wait for its next event; meanwhile look up only whether the client left or its token was revoked.
            while not self.store.wait_for_events(request.job_id, seq, self.watch_poll_s):
                if not context.is_active():
                    return
                if not self.tokens.is_active(context.principal.token_id):
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "the bearer token was revoked")

    def GetClusterStatus(self, request: pb.GetClusterStatusRequest, context: CallContext) -> pb.ClusterStatus:
        nodes = [pb.Node(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""), alive=n["Alive"],
                         total={k: float(v) for k, v in n.get("Resources", {}).items()
                                if k in ("CPU", "GPU", "memory")})
                 for n in ray.nodes()]
        bundle = self.scheduler.settings.trainer_bundle
        resource = "GPU" if bundle.get("GPU") else "CPU"
        total, free = self.scheduler.cluster_resources(), self.scheduler.free_resources()
        jobs = [pb.JobPlacement(job_id=r.job_id, trainer_workers=r.world_size, decode_workers=r.decode_workers,
                                metrics_endpoints=[e for es in r.metrics_endpoints.values() for e in es])
                for r in self.scheduler.active_runners() if context.principal.sees(r.job.tenant)]
        return pb.ClusterStatus(
            nodes=nodes, trainer_resource=resource, jobs=jobs, ray_dashboard=self.ray_dashboard,
            trainer_slots_total=total.get(resource, 0.0) / bundle[resource],
            trainer_slots_free=max(0.0, free.get(resource, 0.0)) / bundle[resource],
            total={k: v for k, v in total.items() if k in ("CPU", "GPU")},
            free={k: v for k, v in free.items() if k in ("CPU", "GPU")})
