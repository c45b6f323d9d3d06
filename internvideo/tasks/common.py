"""Config sections every job kind shares — data, training loop, debugging — defined once.

A kind's config is one of these sections' subclasses plus its own ``model`` section
(``JobConfig``). The coordinator reads any job through ``SharedConfig``, which ignores the
kind's own sections: it schedules, checkpoints and recovers without knowing the kind.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from internvideo.data.decode import DecodeOptions
from internvideo.data.formats import MergedSource, SourceFormat, VideoSource, read_class_names
from internvideo.tasks.paths import JOB_REF, InputPath, is_job_ref


class ConfigError(ValueError):
    """A config that validates but cannot run (a file it names is missing, say); ``field`` is the
    dotted path of what to fix, from the config's root (``data.train_list``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def job_refs(config: Any, path: str = "") -> dict[str, str]:
    """Every ``job:<id>`` value in a config, by its dotted path (``model.init`` → ``job-1a2b…``):
    the jobs whose checkpoints a job starts from, whatever its kind calls the field."""
    if isinstance(config, dict):
        return {k: v for key, value in config.items() for k, v in job_refs(value, f"{path}.{key}".lstrip(".")).items()}
    if isinstance(config, list):
        return {k: v for i, value in enumerate(config) for k, v in job_refs(value, f"{path}.{i}").items()}
    return {path: config.removeprefix(JOB_REF)} if is_job_ref(config) else {}


def replace_job_refs(config: Any, checkpoint_of: Callable[[str], str]) -> Any:
    """The config with each ``job:<id>`` replaced by ``checkpoint_of(id)``."""
    if isinstance(config, dict):
        return {key: replace_job_refs(value, checkpoint_of) for key, value in config.items()}
    if isinstance(config, list):
        return [replace_job_refs(value, checkpoint_of) for value in config]
    return checkpoint_of(config.removeprefix(JOB_REF)) if is_job_ref(config) else config


class Strict(BaseModel):
    """A config section that refuses unknown fields (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


class MergedDataset(Strict):
    """One dataset of a merged label space: its list, in ``format``, and its class names."""

    train_list: InputPath = Field(min_length=1)
    classes: InputPath = Field(min_length=1)  # class names, one per line: line i names class i
    format: Literal["list", "ssv2"] = "list"
    labels: InputPath | None = None  # ssv2: its labels.json
    root: InputPath | None = None

    def source(self) -> VideoSource:
        return VideoSource(self.format, self.train_list, self.root, self.labels)


class DataSection(Strict):
    # For a merged label space, ``merge``: several datasets read as one, classes with the same name
    # sharing an id; otherwise ``train_list``, the annotation file, in ``format``. (A training kind
    # needs one; an evaluation kind reads ``val_list``, and a train list only if it fits something.)
    merge: list[MergedDataset] = Field(default_factory=list)
    train_list: InputPath | None = Field(None, min_length=1)
    # Held-out data in the same format: a kind that validates reports its metrics on it at every
    # checkpoint and at the end (its single test view of each video, sharded over the workers);
    # what an evaluation kind evaluates.
    val_list: InputPath | None = Field(None, min_length=1)
    format: SourceFormat = "list"  # list (path label) | ssv2 | video_text | multiple_choice | activitynet
    labels: InputPath | None = None  # ssv2: its labels.json
    subset: str | None = None  # activitynet: one split
    root: InputPath | None = None  # relative video paths resolve against this (default: the list's folder)
    sampler: Literal["dense", "segment"] = "dense"  # segment: one frame from each of num_frames segments
    sampling_rate: int = Field(4, gt=0)  # dense only
    crop: Literal["multi_scale", "random_resized"] = "multi_scale"
    flip: bool = False  # leave off when classes depend on direction (SSv2, left vs right)
    normalization: Literal["imagenet", "clip"] = "imagenet"
    # Decode videos whose short side is larger straight to this size; "auto": VideoMAE's 256 for 224,
    # i.e. 8/7 of the input; "full": never scale.
    decode_short_side: int | Literal["auto", "full"] = "auto"
    decode_workers: int = Field(2, ge=1)  # the pool's size at start, and its minimum
    decode_workers_max: int | None = Field(None, ge=1)  # grow up to this while trainers wait; None: fixed
    decode_cpus: float = Field(1.0, gt=0)
    # Decode threads per worker; None: one per CPU in decode_cpus. A few workers of several threads
    # cost less than many single-threaded ones (fewer processes; benchmarks/README.md).
    decode_threads: int | None = Field(None, ge=1)
    data_wait_target: float = Field(0.05, gt=0.0, lt=1.0)  # grow the pool when trainers wait longer
    autoscale_window: int = Field(8, ge=1)  # steps of data-wait history behind each pool decision
    max_in_flight: int = Field(4, ge=1)  # decode requests outstanding per trainer (backpressure)
    max_bad_fraction: float = Field(0.1, ge=0.0, le=1.0)
    decode_timeout_s: float = Field(120.0, gt=0)
    # A decode worker that dies is restarted by Ray and its in-flight requests retried, up to
    # this many times per worker; past that, its loss is a failure the job recovers from.
    decode_restarts: int = Field(8, ge=0)
    decode_backend: Literal["decord", "pyav"] = "decord"
    decode_fallback: bool = True  # a file decord cannot read (GIF, raw H.264, MPEG-TS) is read with PyAV
    video_time_limit_s: float = Field(60.0, gt=0)  # a video taking longer is skipped as "timeout"

    @model_validator(mode="after")
    def _consistent(self) -> "DataSection":
        if self.train_list is not None and self.merge:
            raise ValueError("give train_list or merge, not both")
        if self.train_list is not None or self.merge:
            self.source()  # format and its options agree
        if self.decode_workers_max is not None and self.decode_workers_max < self.decode_workers:
            raise ValueError(f"decode_workers_max ({self.decode_workers_max}) is below decode_workers "
                             f"({self.decode_workers})")
        if isinstance(self.decode_short_side, int) and self.decode_short_side < 2:
            raise ValueError(f"decode_short_side must be >= 2, 'auto' or 'full', got {self.decode_short_side}")
        return self

    @property
    def has_training_data(self) -> bool:
        return self.train_list is not None or bool(self.merge)

    def source(self) -> VideoSource | MergedSource:
        if self.merge:
            return MergedSource(tuple((d.source(), d.classes) for d in self.merge))
        if self.train_list is None:
            raise ValueError("data.train_list: not given")
        return self._listed(self.train_list)

    def val_source(self) -> VideoSource | None:
        return self._listed(self.val_list) if self.val_list else None

    def _listed(self, path: str) -> VideoSource:
        return VideoSource(self.format, path, self.root, self.labels, self.subset)

    def decode_options(self, input_size: int) -> DecodeOptions:
        """How the decode workers read videos for a model input of ``input_size`` pixels a side."""
        short_side = self.decode_short_side
        if short_side == "full":
            short_side = None
        elif short_side == "auto":  # VideoMAE resizes to a 256 short side for 224 inputs
            short_side = 2 * round(input_size * 8 / 7 / 2)
        return DecodeOptions(backend=self.decode_backend, fallback=self.decode_fallback,
                             time_limit_s=self.video_time_limit_s, short_side=short_side)

    @property
    def max_decode_workers(self) -> int:
        return self.decode_workers_max or self.decode_workers

    @property
    def threads_per_decode_worker(self) -> int:
        return self.decode_threads or max(1, round(self.decode_cpus))


class TrainingData(DataSection):
    """A training kind's data: the annotation file (or the merged datasets) is required."""

    train_list: InputPath | None = Field(None, min_length=1, validate_default=True)

    @field_validator("train_list")
    @classmethod
    def _given(cls, train_list: str | None, info: ValidationInfo) -> str | None:
        if train_list is None and not info.data.get("merge"):
            raise ValueError("Field required (the annotation file; or several datasets in data.merge)")
        return train_list


class EvalData(DataSection):
    """An evaluation kind's data: ``val_list`` is what it evaluates; ``classes`` names its labels (a
    file, one name per line: line i names class i), where a kind reads them."""

    val_list: InputPath = Field(min_length=1)
    classes: InputPath | None = Field(None, min_length=1)

    def class_names(self, num_classes: int | None = None) -> list[str]:
        """The names in ``classes``; fails (``ConfigError``) unless the file reads, and, given
        ``num_classes``, names that many."""
        if self.classes is None:
            raise ConfigError("data.classes", "not given")
        try:
            names = read_class_names(self.classes)
        except (OSError, ValueError) as err:
            raise ConfigError("data.classes", str(err)) from None
        if num_classes is not None and len(names) != num_classes:
            raise ConfigError("data.classes", f"{len(names)} class names in {self.classes}, but "
                                              f"{num_classes} classes")
        return names


class TrainSection(Strict):
    steps: int = Field(gt=0)
    global_batch: int = Field(gt=0)
    micro_batch: int = Field(gt=0)
    lr: float = Field(1.5e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(0.0, ge=0)  # 0: off
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end
    keep_checkpoints: int = Field(0, ge=0)  # keep the newest K committed checkpoints; 0: keep all
    zero_stage: Literal[0, 1, 2, 3] = 2  # 3 partitions the weights too: the large sizes
    # bf16-autocast: fp32 weights and optimizer, the forward under torch.autocast in bf16 (DeepSpeed's
    # torch_autocast), as a plain torch loop trains. auto: on a GPU that has bf16, bf16-autocast at ZeRO-0/1/2
    # and bf16 weights at ZeRO-3 (workers.engine.resolve_precision); fp32 elsewhere. bf16: bf16 weights.
    precision: Literal["auto", "fp32", "bf16", "bf16-autocast"] = "auto"
    # Recompute each block's activations in the backward pass instead of keeping them (memory for FLOPs).
    activation_checkpointing: bool = False
    # torch.compile the model inside the engine, in place (checkpoints keep their keys): "inductor" fuses
    # kernels (a launch-bound GPU step's lever; a worker's first step waits for the compilation), "aot_eager"
    # only traces forward and backward (checks that a model compiles, at no gain).
    compile: Literal["off", "inductor", "aot_eager"] = "off"
    step_timeout_s: float = Field(600.0, gt=0)
    max_failures: int = Field(3, ge=0)  # worker losses survived by restarting from the last checkpoint
    record_samples: bool = False  # debug: log the sample ids of every step to <job>/samples.jsonl
    resume_from: InputPath | None = None  # a committed checkpoint folder

    @model_validator(mode="after")
    def _batch_splits(self) -> "TrainSection":
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of micro_batch "
                             f"({self.micro_batch})")
        return self


class EvalSection(Strict):
    """How an evaluation job runs: its samples (``data.val_list``) in shards of ``shard_size``, each
    shard's predictions committed when it is done, each shard in micro-batches of ``micro_batch``
    dealt to the workers in turn — so that no prediction depends on the world size."""

    micro_batch: int = Field(8, gt=0)
    shard_size: int = Field(64, gt=0)
    seed: int = 0
    shard_timeout_s: float = Field(600.0, gt=0)
    max_failures: int = Field(3, ge=0)  # worker losses survived by redoing the uncommitted shards

    @property
    def micro_batches_per_shard(self) -> int:
        """The most workers a shard keeps busy."""
        return -(-self.shard_size // self.micro_batch)


class DebugSection(Strict):
    """Control points for tests and fault drills. Off by default; a production job leaves it empty."""

    # The runner pauses when this many steps are done, before the next one, until the file
    # ``<job dir>/release-<steps>`` exists: a test acts on a job at a point it chose (kills a worker,
    # a node, the coordinator), then releases it. Cancel and preemption interrupt a hold.
    hold_at_steps: list[int] = Field(default_factory=list)
    # Every decode request takes at least this long: slow storage, for pool-sizing drills.
    decode_delay_s: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _positive(self) -> "DebugSection":
        if any(step < 0 for step in self.hold_at_steps):
            raise ValueError(f"hold_at_steps must be >= 0, got {self.hold_at_steps}")
        return self


class TelemetrySection(Strict):
    """What the workers cannot find out themselves. Unset: a known GPU's peak comes from a table and
    its energy from NVML; otherwise MFU is "unknown" and energy an estimate (labelled so)."""

    peak_flops: float | None = Field(None, gt=0)  # per worker, in the dtype it trains in
    declared_watts: float | None = Field(None, ge=0)  # per worker, where its energy cannot be measured


class SharedData(DataSection):
    """``data`` as the coordinator reads it: a kind's own data fields (its subsets, its features) are
    the kind's — the runner reads the kind's lists through the kind's config."""

    model_config = ConfigDict(extra="ignore")


class SharedConfig(BaseModel):
    """What every kind's config has: read by the coordinator, which ignores the kind's own sections."""

    model_config = ConfigDict(extra="ignore")

    data: SharedData
    # A training kind has ``train`` (its unit of work: an optimizer step), an evaluation kind ``eval``
    # (its unit: a shard of the evaluated list).
    train: TrainSection | None = None
    eval: EvalSection | None = None
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    debug: DebugSection = Field(default_factory=DebugSection)

    @model_validator(mode="after")
    def _one_loop(self) -> "SharedConfig":
        if (self.train is None) == (self.eval is None):
            raise ValueError("give train (a training kind) or eval (an evaluation kind), not both" if self.train
                             else "train: Field required (or eval, for an evaluation kind)")
        return self

    @property
    def evaluates(self) -> bool:
        return self.eval is not None

    @property
    def seed(self) -> int:
        return self.eval.seed if self.eval else self.train.seed

    @property
    def max_failures(self) -> int:
        return self.eval.max_failures if self.eval else self.train.max_failures

    def valid_world_sizes(self, min_workers: int, max_workers: int) -> list[int]:
        """World sizes in [min, max] that keep the global batch whole, or, for an evaluation, that
        give every worker at least one micro-batch of a shard."""
        sizes = range(min_workers, max_workers + 1)
        if self.eval:
            return [w for w in sizes if w <= self.eval.micro_batches_per_shard]
        return [w for w in sizes if self.train.global_batch % (self.train.micro_batch * w) == 0]


class JobConfig(SharedConfig):
    """Base of every training kind's config: the shared sections, and nothing unknown."""

    model_config = ConfigDict(extra="forbid")

    data: TrainingData
    train: TrainSection


class EvalJobConfig(SharedConfig):
    """Base of every evaluation kind's config: the shared sections, and nothing unknown."""

    model_config = ConfigDict(extra="forbid")

    data: EvalData
    eval: EvalSection = Field(default_factory=EvalSection)
