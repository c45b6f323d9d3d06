"""What a job kind is: the one interface the trainers and decode workers run any kind through.

A kind subclasses ``Task`` in one module under ``internvideo/tasks/`` and says

- its config schema (``config_type``: the shared sections of ``common.py`` plus its own);
- how to build its model (parameters with ``requires_grad=False`` stay out of the optimizer);
- what one sample is (``sample_fn``: run by the decode workers, a pure function of
  ``(record, epoch, sample id)`` returning named arrays);
- how decoded arrays become tensors, and a batch a loss with named metrics (``loss``), or a
  whole optimizer step (``train_step``: a kind whose loss couples the micro-batches overrides it);
- FLOPs per sample, for MFU.

An evaluation kind (``EvaluationTask``) instead of a loss says how a micro-batch becomes per-sample
predictions (``predict``) and how every sample's predictions become its numbers (``evaluate``).

Nothing outside the kind's module knows any of this. The coordinator reads a job's config
through ``SharedConfig`` and what was derived at submit; workers load the kind from a ``TaskRef``.
"""
from __future__ import annotations

import hashlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch

from internvideo.checkpoints import CheckpointMismatch, load_pretrained, read_checkpoint
from internvideo.data.lists import VideoRecord
from internvideo.optim import param_groups
from internvideo.tasks.common import ConfigError, EvalJobConfig, JobConfig, SharedConfig, is_job_ref

ConfigT = TypeVar("ConfigT", bound=SharedConfig)
EvalConfigT = TypeVar("EvalConfigT", bound=EvalJobConfig)


class SampleFn(Protocol):
    """What a decode worker runs for sample ``sample_id`` of ``records`` (the whole list: a sample
    may need another video, a mixing partner say): named arrays, every random draw a function of
    ``(seed, epoch, sample_id)``. Raises DecodeError naming the video that failed. Must pickle (it
    travels to the decode actors). Sample ``i`` is record ``i``'s, unless ``record_index`` says
    otherwise (a kind that cuts a video into several samples). A sample function that cuts several
    clips from one decoded span (repeated sampling) says how many in ``clips_per_sample``, and each
    of its arrays has a leading axis of that many."""

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]: ...


def record_index(sample: SampleFn, sample_id: int) -> int:
    """The record sample ``sample_id`` reads."""
    index = getattr(sample, "record_index", None)
    return index(sample_id) if index is not None else sample_id


def clips_per_sample(sample: SampleFn) -> int:
    """The clips one sample of ``sample`` holds: a micro-batch of ``m`` clips decodes ``m`` / that samples."""
    return getattr(sample, "clips_per_sample", 1)


class StepEngine(Protocol):
    """The slice of a DeepSpeed engine a task's step uses (a plain-torch stand-in serves in tests)."""

    module: torch.nn.Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def backward(self, loss: torch.Tensor) -> Any: ...
    def step(self) -> None: ...


class Task(ABC, Generic[ConfigT]):
    """One job kind, bound to a job's validated config."""

    kind: ClassVar[str]  # the name jobs are submitted with, e.g. "pretrain-mae"
    encoder: ClassVar[str]  # the encoder it trains, for metric labels, e.g. "videomae"
    config_type: ClassVar[type[JobConfig]]

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    # -- submit time ----------------------------------------------------------------------------
    def check_inputs(self) -> None:
        """Fail with ``ConfigError`` if a file the config names is unusable now (failing at submit
        beats failing after start-up). The data source is checked for every kind; a kind that
        names more files extends this (and ``check_records`` sees the records read here)."""
        try:
            records = self.config.data.source().read()
        except (OSError, ValueError) as err:
            raise ConfigError("data.merge" if self.config.data.merge else "data.train_list", str(err)) from None
        needed = self.config.train.global_batch // clips_per_sample(self.sample_fn())
        if len(records) < needed:
            raise ConfigError("train.global_batch", f"{self.config.train.global_batch}, but the data has "
                                                    f"{len(records)} samples: a step needs {needed}")
        self.check_records(records)
        val = self.config.data.val_source()
        if val is not None:
            if not self.validates:
                raise ConfigError("data.val_list", f"{self.kind} reports no validation")
            try:
                val.read()
            except (OSError, ValueError) as err:
                raise ConfigError("data.val_list", str(err)) from None

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        """At submit: whether this kind can train on these records (labels in range, captions present)."""

    # -- model ----------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The model, with the same initial weights on every rank and every run."""

    @abstractmethod
    def flops_per_sample(self, model: torch.nn.Module) -> float:
        """Matmul FLOPs of one training sample, forward and backward."""

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (weight decay on matrices; a kind may add layer-wise
        learning-rate decay through ``lr_scale``)."""
        return param_groups(model, self.config.train.weight_decay)

    # -- validation (a kind that reports none leaves these) ---------------------------------------------
    validates: ClassVar[bool] = False

    def val_sample_fn(self) -> SampleFn:
        """What the decode workers run for a held-out sample: its single test view, no random draw."""
        raise NotImplementedError(f"{self.kind} reports no validation")

    def predict(self, model: StepEngine | torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample outputs of a held-out micro-batch (rows in the batch's order), in eval mode."""
        raise NotImplementedError(f"{self.kind} reports no validation")

    def validation_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """The metrics of every held-out sample's outputs, rows in sample-id order."""
        raise NotImplementedError(f"{self.kind} reports no validation")

    # -- state that is the kind's own (a moving average of the weights, say) -------------------------
    def after_step(self, model: torch.nn.Module) -> None:
        """Called once the optimizer has stepped (the trainer passes the unwrapped model)."""

    def state_dict(self) -> dict[str, Any]:
        """Saved with every checkpoint, restored by ``load_state_dict``: resume must be exact."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.kind} keeps no state of its own, but the checkpoint holds {sorted(state)}")

    # -- data -----------------------------------------------------------------------------------
    @abstractmethod
    def sample_fn(self) -> SampleFn:
        """What the decode workers run for each sample."""

    @abstractmethod
    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A decoded micro-batch (the sample arrays stacked) as model input on ``device``."""

    # -- training -------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, model: StepEngine | torch.nn.Module,
             batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's loss and named metrics (detached scalars)."""

    def train_step(self, engine: StepEngine, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; returns metrics averaged over them,
        ``loss`` among them. The engine accumulates gradients and steps at the last micro-batch."""
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in batches:
            loss, metrics = self.loss(engine, batch)
            engine.backward(loss)
            engine.step()
            for name, value in {"loss": loss.detach(), **metrics}.items():
                sums[name] = sums.get(name, 0.0) + value.float()
            count += 1
        # One device sync for all metrics, not one per micro-batch.
        values = torch.stack(list(sums.values())).div_(count).tolist()
        return dict(zip(sums, values))


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's numbers: ``metrics``, named scalars (the job result's metrics), and ``details``,
    what is not one number (per-class accuracy, a confusion matrix), as JSON-able data."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: str = ""  # a folder of files the kind wrote (features): the job's final checkpoint


class EvaluationTask(Task[EvalConfigT]):
    """A kind that evaluates a model on ``data.val_list``. Its unit of work is a shard of that list:
    each sample's views are decoded by the decode pool (``sample_fn``), ``predict`` maps a micro-batch
    to per-sample outputs in inference mode — no optimizer, no ZeRO — and ``evaluate`` maps every
    sample's outputs to the numbers. ``flops_per_sample`` is then a forward pass."""

    def check_inputs(self) -> None:
        """The list reads and fits (``check_records``), and the weights evaluated (``model.init``) fit
        the model — checked on the meta device: keys and shapes, no memory for the weights (a
        ``job:<id>`` is checked when the job starts, once that job has ended)."""
        check_weights_path("model.init", self.config.model.init)
        try:
            records = self.config.data.val_source().read()
        except (OSError, ValueError) as err:
            raise ConfigError("data.val_list", str(err)) from None
        self.check_records(records)
        if not is_job_ref(self.config.model.init):
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
                self.build_model()

    def sample_fn(self) -> SampleFn:
        """What the decode workers run for each evaluated sample (every view of it)."""
        return self.val_sample_fn()

    @abstractmethod
    def val_sample_fn(self) -> SampleFn: ...

    @abstractmethod
    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def sample_count(self, records: Sequence[VideoRecord]) -> int:
        """How many samples the evaluated list makes: one per record, unless the kind cuts records up."""
        return len(records)

    def plan_key(self, records: Sequence[VideoRecord]) -> str:
        """What sample ids mean: committed predictions count only under the same key (an edited list,
        or a kind's plan of its samples that came out otherwise, starts the shards again)."""
        described = [(r.path, r.label, r.captions) for r in records]
        return hashlib.sha256(repr((self.sample_count(records), described)).encode()).hexdigest()

    @abstractmethod
    def evaluate(self, outputs: dict[str, np.ndarray], folder: Path) -> Evaluation:
        """The numbers, from the outputs of every sample that could be decoded (rows in sample-id
        order; ``outputs["sample_ids"]`` says which samples they are). ``folder``: the job's own,
        for files the kind writes."""

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        raise TypeError(f"{self.kind} evaluates: it has no optimizer")

    def loss(self, model: StepEngine | torch.nn.Module,
             batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise TypeError(f"{self.kind} evaluates: it has no loss")


def array_to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A decoded array on ``device``. Arrays from Ray's object store are read-only, and torch
    wants to own writable memory: copy only when needed."""
    return torch.from_numpy(np.require(array, requirements="W")).to(device, non_blocking=True)


def check_weights_path(field: str, path: str) -> None:
    """At submit: initial weights that name a file or folder must exist (``job:<id>`` is checked by
    the coordinator, and resolved when the job starts)."""
    if not is_job_ref(path) and not Path(path).exists():
        raise ConfigError(field, f"no such checkpoint file or folder: {path}")


def load_initial_weights(model: torch.nn.Module, path: str, *, field: str = "model.init",
                         allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> None:
    """Load ``path`` (a file in any layout ``internvideo.checkpoints`` reads, or a committed checkpoint
    folder) into ``model``; a file that is missing or does not fit fails as the config field's error,
    naming the keys, before any step runs."""
    try:
        load_pretrained(model, read_checkpoint(path), allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    except (OSError, CheckpointMismatch) as err:
        raise ConfigError(field, f"{path}: {err}") from None


def unwrap(model: StepEngine | torch.nn.Module) -> torch.nn.Module:
    """The model inside an engine wrapper (DeepSpeed's ``module``), or the model itself."""
    return getattr(model, "module", model)
