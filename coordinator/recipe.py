"""Recipes: a chain of jobs submitted as one request (InternVideo's stages: masked pretraining →
video–language pretraining → supervised post-pretraining → interaction).

A recipe is YAML: a name and a list of stages, each a job kind with its config (a mapping; the
client inlines presets and files), ``set`` overrides and its worker range. A value
``stage:<name>`` anywhere in a stage's config or overrides names an earlier stage's final
checkpoint; it becomes ``job:<id>`` of that stage's job, so the scheduler starts a stage once
the stages it names have succeeded, and fails it with their reason if one does not. Every stage
is validated as a job would be, and either all are stored or none.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coordinator.state import JobState
from coordinator.store import JobSpec, new_job_id
from coordinator.submission import (
    MAX_OVERRIDES,
    InvalidSubmission,
    SubmissionContext,
    load_yaml,
    validate_submission,
)

MAX_STAGES = 64
STAGE_REF = re.compile(r"^stage:(?P<name>[\w.-]+)$")
OVERRIDE = re.compile(r"^(?P<stage>[\w.-]+?):(?P<setting>.+=.*)$")


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[\w.-]+$")
    kind: str
    config: dict[str, Any] = Field(default_factory=dict)
    set: list[str] = Field(default_factory=list)
    min_workers: int = Field(1, ge=1)
    max_workers: int = Field(0, ge=0)  # 0: min_workers


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("recipe", pattern=r"^[\w.-]+$")
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return stages


def parse_recipe(text: str, overrides: list[str]) -> Recipe:
    """The recipe, with ``STAGE:key=value`` overrides appended to that stage's ``set``."""
    raw = load_yaml(text, "recipe_yaml")
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidSubmission("overrides", f"{len(overrides)} of them, more than the limit of {MAX_OVERRIDES}")
    try:
        recipe = Recipe.model_validate(raw if isinstance(raw, dict) else {"stages": raw})
    except ValidationError as err:
        first = err.errors()[0]
        raise InvalidSubmission(".".join(str(p) for p in ("recipe", *first["loc"])), first["msg"]) from None
    stages = {s.name: s for s in recipe.stages}
    for item in overrides:
        match = OVERRIDE.match(item)
        if not match or match["stage"] not in stages:
            raise InvalidSubmission("overrides", f"{item!r} is not STAGE:key=value for a stage of "
                                                 f"{sorted(stages)}")
        stages[match["stage"]].set.append(match["setting"])
    return recipe


def _stage_refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [ref for v in value.values() for ref in _stage_refs(v)]
    if isinstance(value, list):
        return [ref for v in value for ref in _stage_refs(v)]
    if isinstance(value, str):
        match = STAGE_REF.match(value.split("=", 1)[-1].strip())
        return [match["name"]] if match else []
    return []


def _replace_stage_refs(value: Any, job_ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _replace_stage_refs(v, job_ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_stage_refs(v, job_ids) for v in value]
    if isinstance(value, str):
        key, sep, rest = value.rpartition("=")
        match = STAGE_REF.match(rest.strip())
        if match:
            return f"{key}{sep}job:{job_ids[match['name']]}"
    return value


def _in_dependency_order(recipe: Recipe) -> list[Stage]:
    """The stages, each after the stages it names; an unknown name or a cycle is refused."""
    stages = {s.name: s for s in recipe.stages}
    needs = {s.name: _stage_refs([s.config, s.set]) for s in recipe.stages}
    for index, stage in enumerate(recipe.stages):
        unknown = [n for n in needs[stage.name] if n not in stages]
        if unknown:
            raise InvalidSubmission(f"recipe.stages.{index}", f"stage {stage.name!r} names unknown stages {unknown}")
    ordered: list[Stage] = []
    state: dict[str, str] = {}  # visiting | done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise InvalidSubmission("recipe.stages", f"the stages name each other in a cycle: {' → '.join(cycle)}")
        state[name] = "visiting"
        for needed in needs[name]:
            visit(needed, path + [name])
        state[name] = "done"
        ordered.append(stages[name])

    for stage in recipe.stages:
        visit(stage.name, [])
    return ordered


def plan_recipe(text: str, overrides: list[str], *, context: SubmissionContext = SubmissionContext(),
                priority: int = 0, request_id: str = "") -> list[JobSpec]:
    """Validated jobs for every stage, in dependency order, with the ids they will be stored under."""
    recipe = parse_recipe(text, overrides)
    ordered = _in_dependency_order(recipe)
    job_ids = {stage.name: new_job_id() for stage in recipe.stages}
    ours = set(job_ids.values())
    outside = context.job_state
    context = dataclasses.replace(
        context, job_state=lambda job_id: JobState.QUEUED if job_id in ours else outside(job_id))
    specs = []
    for stage in ordered:
        try:
            specs.append(validate_submission(
                kind=stage.kind, config_text=yaml.safe_dump(_replace_stage_refs(stage.config, job_ids)),
                overrides=_replace_stage_refs(stage.set, job_ids), min_workers=stage.min_workers,
                max_workers=stage.max_workers, priority=priority, name=f"{recipe.name}/{stage.name}",
                request_id=f"{request_id}/{stage.name}" if request_id else "", job_id=job_ids[stage.name],
                context=context))
        except InvalidSubmission as err:
            raise type(err)(f"recipe.{stage.name}.{err.field}", str(err).split(": ", 1)[1]) from None
    return specs
