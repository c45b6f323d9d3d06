"""Translation between store records and protobuf messages (nothing else lives here)."""
from __future__ import annotations

import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.efficiency import Efficiency
from coordinator.state import JobState
from coordinator.store import CheckpointRecord, JobEvent, JobRecord, SkippedVideoRecord
from protos.internvideo.v1 import jobs_pb2 as pb


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def state_to_proto(state: JobState | str) -> int:
    return pb.JobState.Value(f"JOB_STATE_{JobState(state).value}")


def state_from_proto(value: int) -> JobState:
    name = pb.JobState.Name(value)
    if value == pb.JOB_STATE_UNSPECIFIED:
        raise ValueError("JOB_STATE_UNSPECIFIED is not a state")
    return JobState(name.removeprefix("JOB_STATE_"))


_PROGRESS_FIELDS = {f.name for f in pb.Progress.DESCRIPTOR.fields}


def progress_to_proto(progress: dict[str, Any]) -> pb.Progress:
    return pb.Progress(**{k: v for k, v in progress.items() if k in _PROGRESS_FIELDS})


def result_to_proto(result: dict[str, Any]) -> pb.JobResult:
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    details = result.get("details")
    return pb.JobResult(metrics=metrics, final_checkpoint=result.get("final_checkpoint", ""),
                        details_json=json.dumps(details) if details else "")


def checkpoint_to_proto(ckpt: CheckpointRecord) -> pb.Checkpoint:
    return pb.Checkpoint(step=ckpt.step, path=ckpt.path, world_size=ckpt.world_size,
                         created_at=timestamp(ckpt.created_at))


def skipped_to_proto(skip: SkippedVideoRecord) -> pb.SkippedVideo:
    return pb.SkippedVideo(path=skip.path, reason=skip.reason, detail=skip.detail, count=skip.count)


def job_to_proto(job: JobRecord, checkpoints: list[CheckpointRecord],
                 skipped: list[SkippedVideoRecord]) -> pb.Job:
    return pb.Job(
        job_id=job.job_id, name=job.name, kind=job.kind, state=state_to_proto(job.state), message=job.message,
        request_id=job.request_id, config_json=json.dumps(job.config), min_workers=job.min_workers,
        max_workers=job.max_workers, world_size=job.world_size, priority=job.priority,
        progress=progress_to_proto(job.progress), result=result_to_proto(job.result),
        checkpoints=[checkpoint_to_proto(c) for c in checkpoints],
        skipped_videos=[skipped_to_proto(s) for s in skipped],
        created_at=timestamp(job.created_at), updated_at=timestamp(job.updated_at),
        depends_on=list(job.needs.depends_on) if job.needs else [])


def event_to_proto(event: JobEvent) -> pb.JobEvent:
    out = pb.JobEvent(job_id=event.job_id, seq=event.seq, time=timestamp(event.time))
    p = event.payload
    if event.type == "state":
        out.state_changed.CopyFrom(pb.StateChanged(
            from_state=state_to_proto(p["from"]) if p["from"] else pb.JOB_STATE_UNSPECIFIED,
            to_state=state_to_proto(p["to"]), message=p.get("message", "")))
    elif event.type == "progress":
        out.progress.CopyFrom(progress_to_proto(p))
    elif event.type == "checkpoint":
        out.checkpoint.CopyFrom(pb.Checkpoint(step=p["step"], path=p["path"], world_size=p["world_size"],
                                              created_at=timestamp(event.time)))
    elif event.type == "shard":
        out.shard_committed.CopyFrom(pb.ShardCommitted(**p))
    elif event.type == "skipped_video":
        out.skipped_video.CopyFrom(pb.SkippedVideo(path=p["path"], reason=p["reason"], detail=p["detail"], count=1))
    elif event.type == "decode_pool":
        out.decode_pool_resized.CopyFrom(pb.DecodePoolResized(
            from_workers=p["from"], to_workers=p["to"], data_wait_fraction=p["data_wait_fraction"],
            reason=p["reason"]))
    elif event.type == "validation":
        out.validation.CopyFrom(pb.Validation(step=p["step"], metrics=p["metrics"]))
    elif event.type == "workers":
        out.workers_started.CopyFrom(pb.WorkersStarted(workers=[
            pb.Worker(device_name=w["device_name"], peak_flops=w["peak_flops"] or 0.0, peak=w["peak"],
                      energy_sources=w["energy_sources"]) for w in p["workers"]]))
    elif event.type == "result":
        out.result.CopyFrom(result_to_proto(p))
    else:
        raise ValueError(f"unknown event type {event.type!r}")
    return out


def efficiency_to_proto(job_id: str, efficiency: Efficiency) -> pb.JobEfficiency:
    figures = {name: value for name, value in efficiency.as_metrics().items()
               if not name.startswith("lost_gpu_seconds_")}
    return pb.JobEfficiency(job_id=job_id, figures=figures, lost_gpu_seconds=efficiency.lost_gpu_seconds,
                            energy_sources=list(efficiency.energy_sources), peak=efficiency.peak)
