"""Turns a SubmitJob request into a validated JobSpec, or says which field is wrong."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from coordinator.state import JobState
from coordinator.store import LOCAL_TENANT, JobNeeds, JobSpec
from internvideo.tasks import ConfigError, Task, get_task_type
from internvideo.tasks.common import SharedConfig, job_refs
from internvideo.tasks.paths import OUTSIDE_ROOTS, PATH_POLICY, PathPolicy
from workers.checkpoint import read_commit

# What one request may hold. A real config is a few KB and a few hundred values; the node budget
# also stops YAML's aliases from expanding a small text into a huge config ("billion laughs").
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_NODES = 100_000
MAX_OVERRIDES = 256
MAX_FIELD_CHARS = 256  # a name, a request id, a kind


class InvalidSubmission(ValueError):
    """A bad request; ``field`` names what to fix (gRPC: INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PathNotAllowed(InvalidSubmission):
    """A path outside the coordinator's roots (gRPC: PERMISSION_DENIED)."""


@dataclass(frozen=True)
class SubmissionContext:
    """What the coordinator knows of a request beyond its fields: whose it is, the state of the jobs
    it may start from (``job:<id>``; None for a job that does not exist or is another tenant's), and
    the roots its paths must stay under (None: anywhere)."""

    tenant: str = LOCAL_TENANT
    job_state: Callable[[str], JobState | None] = lambda job_id: None
    paths: PathPolicy | None = None


def check_length(field: str, value: str, limit: int = MAX_FIELD_CHARS) -> None:
    if len(value) > limit:
        raise InvalidSubmission(field, f"{len(value)} characters, more than the limit of {limit}")


def load_yaml(text: str, field: str) -> Any:
    """YAML (safe loading: plain data, no Python objects) within the size and node budgets."""
    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise InvalidSubmission(field, f"{len(text.encode())} bytes, more than the limit of {MAX_CONFIG_BYTES}")
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise InvalidSubmission(field, f"not valid YAML: {err}") from None
    except RecursionError:
        raise InvalidSubmission(field, "nested too deeply") from None
    _check_node_count(value, field)
    return value


def _check_node_count(value: Any, field: str) -> None:
    """Count values as a walk would meet them (an alias counts its whole target again), stopping
    once over the budget."""
    seen, pending = 0, [value]
    while pending:
        node = pending.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise InvalidSubmission(field, f"more than {MAX_CONFIG_NODES} values (aliases counted expanded)")
        if isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def parse_config(text: str) -> dict[str, Any]:
    config = load_yaml(text, "config_yaml")
    if not isinstance(config, dict):
        raise InvalidSubmission("config_yaml", "must be a mapping of sections (model, data, train)")
    return config


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b=value`` sets config[a][b]; the value is read as YAML (so 3 is an int, [1,2] a list)."""
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidSubmission("overrides", f"{len(overrides)} of them, more than the limit of {MAX_OVERRIDES}")
    config = json.loads(json.dumps(config))  # a deep copy
    for item in overrides:
        check_length("overrides", item, MAX_CONFIG_BYTES // MAX_OVERRIDES)
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSubmission("overrides", f"{item!r} is not key=value")
        *parents, leaf = key.strip().split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidSubmission(f"config.{key}", f"{part} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise InvalidSubmission(f"config.{key}", f"value is not valid YAML: {err}") from None
    _check_node_count(config, "overrides")  # an override's value may hold aliases too
    return config


def derive_needs(config: SharedConfig, min_workers: int, max_workers: int,
                 depends_on: tuple[str, ...] = ()) -> JobNeeds:
    """What the scheduler needs of a job, once, at submit."""
    return JobNeeds(world_sizes=tuple(config.valid_world_sizes(min_workers, max_workers)),
                    decode_workers=config.data.decode_workers, decode_cpus=config.data.decode_cpus,
                    depends_on=depends_on)


def _check_job_refs(raw: dict[str, Any], job_state: Callable[[str], JobState | None]) -> tuple[str, ...]:
    """The jobs a config starts from (``job:<id>``): each must exist and not have ended without a
    checkpoint to give (``job_state`` answers None for a job that does not exist)."""
    refs = job_refs(raw)
    for path, job_id in refs.items():
        state = job_state(job_id)
        if state is None:
            raise InvalidSubmission(f"config.{path}", f"no job {job_id!r}")
        if state in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidSubmission(f"config.{path}", f"job {job_id} {state.value.lower()}: it has no final checkpoint")
    return tuple(dict.fromkeys(refs.values()))


def _check_inputs(task: Task) -> None:
    """The files a job names must be usable now: failing at submit beats failing after start-up."""
    try:
        task.check_inputs()
    except ConfigError as err:
        raise InvalidSubmission(f"config.{err.field}", err.message) from None
    resume_from = task.config.train.resume_from if task.config.train else None
    if resume_from:
        try:
            read_commit(resume_from)
        except ValueError as err:
            raise InvalidSubmission("config.train.resume_from", str(err)) from None


def validate_submission(*, kind: str, config_text: str, overrides: list[str], min_workers: int,
                        max_workers: int, priority: int = 0, name: str = "", request_id: str = "",
                        context: SubmissionContext = SubmissionContext(), job_id: str = "") -> JobSpec:
    """``job_id``: the id to store the job under (a recipe assigns them before any is stored)."""
    for field, value in (("kind", kind), ("name", name), ("request_id", request_id)):
        check_length(field, value)
    try:
        task_type = get_task_type(kind)
    except KeyError as err:
        raise InvalidSubmission("kind", err.args[0]) from None
    if min_workers < 1:
        raise InvalidSubmission("min_workers", f"must be at least 1, got {min_workers}")
    max_workers = max_workers or min_workers
    if max_workers < min_workers:
        raise InvalidSubmission("max_workers", f"must be ≥ min_workers ({min_workers}), got {max_workers}")
    try:
        raw = apply_overrides(parse_config(config_text), overrides)
        config = task_type.config_type.model_validate(raw, context={PATH_POLICY: context.paths})
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in ("config", *first["loc"]))
        raise (PathNotAllowed if first["type"] == OUTSIDE_ROOTS else InvalidSubmission)(field, first["msg"]) from None
    except RecursionError:
        raise InvalidSubmission("config_yaml", "nested too deeply") from None
    depends_on = _check_job_refs(raw, context.job_state)
    _check_inputs(task_type(config))
    needs = derive_needs(config, min_workers, max_workers, depends_on)
    if not needs.world_sizes and config.evaluates:
        raise InvalidSubmission(
            "min_workers", f"a shard of {config.eval.shard_size} samples in micro-batches of {config.eval.micro_batch} "
            f"keeps at most {config.eval.micro_batches_per_shard} workers busy, fewer than {min_workers}")
    if not needs.world_sizes:
        raise InvalidSubmission(
            "config.train.global_batch",
            f"{config.train.global_batch} cannot be split into micro-batches of {config.train.micro_batch} "
            f"over any world size in [{min_workers}, {max_workers}]")
    return JobSpec(kind=kind, config=config.model_dump(mode="json"), min_workers=min_workers,
                   max_workers=max_workers, needs=needs, priority=priority, name=name, request_id=request_id,
                   tenant=context.tenant, job_id=job_id)
