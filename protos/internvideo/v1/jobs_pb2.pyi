import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_STARTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_RESCALING: _ClassVar[JobState]
    JOB_STATE_RECOVERING: _ClassVar[JobState]
    JOB_STATE_PREEMPTED: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_STARTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_RESCALING: JobState
JOB_STATE_RECOVERING: JobState
JOB_STATE_PREEMPTED: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class SubmitJobRequest(_message.Message):
    __slots__ = ("request_id", "kind", "config_yaml", "overrides", "min_workers", "max_workers", "priority", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    kind: str
    config_yaml: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    min_workers: int
    max_workers: int
    priority: int
    name: str
    def __init__(self, request_id: _Optional[str] = ..., kind: _Optional[str] = ..., config_yaml: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., min_workers: _Optional[int] = ..., max_workers: _Optional[int] = ..., priority: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class SubmitRecipeRequest(_message.Message):
    __slots__ = ("request_id", "recipe_yaml", "overrides", "priority")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_YAML_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    recipe_yaml: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    priority: int
    def __init__(self, request_id: _Optional[str] = ..., recipe_yaml: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., priority: _Optional[int] = ...) -> None: ...

class SubmitRecipeResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "kinds", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., kinds: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "samples", "epoch", "loss", "clips_per_second", "step_seconds", "data_wait_fraction", "decode_workers", "metrics", "world_size", "model_flops", "step_joules", "held_gpu_seconds", "kept_gpu_seconds", "joules", "unit", "worker_seconds")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CLIPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DATA_WAIT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DECODE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FLOPS_FIELD_NUMBER: _ClassVar[int]
    STEP_JOULES_FIELD_NUMBER: _ClassVar[int]
    HELD_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEPT_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JOULES_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    WORKER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    samples: int
    epoch: int
    loss: float
    clips_per_second: float
    step_seconds: float
    data_wait_fraction: float
    decode_workers: int
    metrics: _containers.ScalarMap[str, float]
    world_size: int
    model_flops: float
    step_joules: float
    held_gpu_seconds: float
    kept_gpu_seconds: float
    joules: float
    unit: str
    worker_seconds: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., samples: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., clips_per_second: _Optional[float] = ..., step_seconds: _Optional[float] = ..., data_wait_fraction: _Optional[float] = ..., decode_workers: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., world_size: _Optional[int] = ..., model_flops: _Optional[float] = ..., step_joules: _Optional[float] = ..., held_gpu_seconds: _Optional[float] = ..., kept_gpu_seconds: _Optional[float] = ..., joules: _Optional[float] = ..., unit: _Optional[str] = ..., worker_seconds: _Optional[float] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("device_name", "peak_flops", "peak", "energy_sources")
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    PEAK_FLOPS_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCES_FIELD_NUMBER: _ClassVar[int]
    device_name: str
    peak_flops: float
    peak: str
    energy_sources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, device_name: _Optional[str] = ..., peak_flops: _Optional[float] = ..., peak: _Optional[str] = ..., energy_sources: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkersStarted(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ...) -> None: ...

class DecodePoolResized(_message.Message):
    __slots__ = ("from_workers", "to_workers", "data_wait_fraction", "reason")
    FROM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    TO_WORKERS_FIELD_NUMBER: _ClassVar[int]
    DATA_WAIT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_workers: int
    to_workers: int
    data_wait_fraction: float
    reason: str
    def __init__(self, from_workers: _Optional[int] = ..., to_workers: _Optional[int] = ..., data_wait_fraction: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Validation(_message.Message):
    __slots__ = ("step", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "path", "world_size", "created_at")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    world_size: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ..., world_size: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ShardCommitted(_message.Message):
    __slots__ = ("shard", "num_shards", "samples", "path", "world_size")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    num_shards: int
    samples: int
    path: str
    world_size: int
    def __init__(self, shard: _Optional[int] = ..., num_shards: _Optional[int] = ..., samples: _Optional[int] = ..., path: _Optional[str] = ..., world_size: _Optional[int] = ...) -> None: ...

class SkippedVideo(_message.Message):
    __slots__ = ("path", "reason", "detail", "count")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    detail: str
    count: int
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("metrics", "final_checkpoint", "details_json")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FINAL_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    final_checkpoint: str
    details_json: str
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ..., final_checkpoint: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "name", "kind", "state", "message", "request_id", "config_json", "min_workers", "max_workers", "world_size", "priority", "progress", "result", "checkpoints", "skipped_videos", "created_at", "updated_at", "depends_on")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_VIDEOS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    kind: str
    state: JobState
    message: str
    request_id: str
    config_json: str
    min_workers: int
    max_workers: int
    world_size: int
    priority: int
    progress: Progress
    result: JobResult
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    skipped_videos: _containers.RepeatedCompositeFieldContainer[SkippedVideo]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., request_id: _Optional[str] = ..., config_json: _Optional[str] = ..., min_workers: _Optional[int] = ..., max_workers: _Optional[int] = ..., world_size: _Optional[int] = ..., priority: _Optional[int] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., skipped_videos: _Optional[_Iterable[_Union[SkippedVideo, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., depends_on: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "history_only")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ONLY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    history_only: bool
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., history_only: _Optional[bool] = ...) -> None: ...

class StateChanged(_message.Message):
    __slots__ = ("from_state", "to_state", "message")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    from_state: JobState
    to_state: JobState
    message: str
    def __init__(self, from_state: _Optional[_Union[JobState, str]] = ..., to_state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "seq", "time", "state_changed", "progress", "checkpoint", "skipped_video", "result", "decode_pool_resized", "validation", "workers_started", "shard_committed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_VIDEO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DECODE_POOL_RESIZED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_STARTED_FIELD_NUMBER: _ClassVar[int]
    SHARD_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    state_changed: StateChanged
    progress: Progress
    checkpoint: Checkpoint
    skipped_video: SkippedVideo
    result: JobResult
    decode_pool_resized: DecodePoolResized
    validation: Validation
    workers_started: WorkersStarted
    shard_committed: ShardCommitted
    def __init__(self, job_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed: _Optional[_Union[StateChanged, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., skipped_video: _Optional[_Union[SkippedVideo, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., decode_pool_resized: _Optional[_Union[DecodePoolResized, _Mapping]] = ..., validation: _Optional[_Union[Validation, _Mapping]] = ..., workers_started: _Optional[_Union[WorkersStarted, _Mapping]] = ..., shard_committed: _Optional[_Union[ShardCommitted, _Mapping]] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "address", "alive", "total")
    class TotalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    alive: bool
    total: _containers.ScalarMap[str, float]
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., total: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobPlacement(_message.Message):
    __slots__ = ("job_id", "trainer_workers", "decode_workers", "metrics_endpoints")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    DECODE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    trainer_workers: int
    decode_workers: int
    metrics_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., trainer_workers: _Optional[int] = ..., decode_workers: _Optional[int] = ..., metrics_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("nodes", "trainer_resource", "trainer_slots_total", "trainer_slots_free", "jobs", "total", "free", "ray_dashboard")
    class TotalEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FreeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NODES_FIELD_NUMBER: _ClassVar[int]
    TRAINER_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TRAINER_SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TRAINER_SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    RAY_DASHBOARD_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    trainer_resource: str
    trainer_slots_total: float
    trainer_slots_free: float
    jobs: _containers.RepeatedCompositeFieldContainer[JobPlacement]
    total: _containers.ScalarMap[str, float]
    free: _containers.ScalarMap[str, float]
    ray_dashboard: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., trainer_resource: _Optional[str] = ..., trainer_slots_total: _Optional[float] = ..., trainer_slots_free: _Optional[float] = ..., jobs: _Optional[_Iterable[_Union[JobPlacement, _Mapping]]] = ..., total: _Optional[_Mapping[str, float]] = ..., free: _Optional[_Mapping[str, float]] = ..., ray_dashboard: _Optional[str] = ...) -> None: ...

class JobEfficiency(_message.Message):
    __slots__ = ("job_id", "figures", "lost_gpu_seconds", "energy_sources", "peak")
    class FiguresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LostGpuSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    LOST_GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCES_FIELD_NUMBER: _ClassVar[int]
    PEAK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    figures: _containers.ScalarMap[str, float]
    lost_gpu_seconds: _containers.ScalarMap[str, float]
    energy_sources: _containers.RepeatedScalarFieldContainer[str]
    peak: str
    def __init__(self, job_id: _Optional[str] = ..., figures: _Optional[_Mapping[str, float]] = ..., lost_gpu_seconds: _Optional[_Mapping[str, float]] = ..., energy_sources: _Optional[_Iterable[str]] = ..., peak: _Optional[str] = ...) -> None: ...
