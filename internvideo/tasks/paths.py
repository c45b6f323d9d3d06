"""Config fields that name files, and the roots a shared coordinator confines them to.

A field typed ``InputPath`` (read: lists, class names, checkpoints to start from) must resolve
under a data or a storage root; ``OutputPath`` (written: features) under a storage root. Resolving
means ``realpath``: ``..`` and every symlink on the way are followed before the check, so a link
inside a root that points out of it is outside. The check runs when a config is validated with a
policy in the validation context (the coordinator, at submit); without one — a worker re-reading
an admitted config, a test — paths are taken as given. ``job:<id>`` is not a path: the
coordinator resolves it to that job's checkpoint (the submitting tenant's own job).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Iterable

from pydantic import AfterValidator, ValidationInfo
from pydantic_core import PydanticCustomError

JOB_REF = "job:"  # a config value "job:<id>": that job's final committed checkpoint
PATH_POLICY = "path_policy"  # the validation-context key
OUTSIDE_ROOTS = "path_outside_roots"  # the error type a caller can tell apart from a malformed config


def is_job_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(JOB_REF) and len(value) > len(JOB_REF)


def _under(path: str, folder: str) -> bool:
    return os.path.commonpath((path, folder)) == folder


@dataclass(frozen=True)
class PathPolicy:
    """``private``: folders no config may name even inside a root — the coordinator's own state (its
    database and tokens, every tenant's checkpoints: a job reaches its own through ``job:<id>``)."""

    data_roots: tuple[str, ...]
    storage_roots: tuple[str, ...]
    private: tuple[str, ...] = ()

    @classmethod
    def of(cls, data_roots: Iterable[str | os.PathLike], storage_roots: Iterable[str | os.PathLike],
           private: Iterable[str | os.PathLike] = ()) -> "PathPolicy":
        def resolved(paths: Iterable[str | os.PathLike]) -> tuple[str, ...]:
            return tuple(os.path.realpath(p) for p in paths)

        return cls(resolved(data_roots), resolved(storage_roots), resolved(private))

    def check(self, value: str, writes: bool) -> str:
        if is_job_ref(value):
            return value
        roots = self.storage_roots if writes else self.data_roots + self.storage_roots
        resolved = os.path.realpath(value)
        if any(_under(resolved, folder) for folder in self.private):
            raise PydanticCustomError(OUTSIDE_ROOTS, "{value} resolves to {resolved}, inside the coordinator's own "
                                      "state (name another job's checkpoint as job:<id>)",
                                      {"value": value, "resolved": resolved})
        if not any(_under(resolved, root) for root in roots):
            what = "storage" if writes else "data or storage"
            raise PydanticCustomError(OUTSIDE_ROOTS, "{value} resolves to {resolved}, outside the coordinator's "
                                      "{what} roots ({roots})",
                                      {"value": value, "resolved": resolved, "what": what,
                                       "roots": ", ".join(roots) or "none"})
        return value


def _confined(writes: bool) -> AfterValidator:
    def check(value: str, info: ValidationInfo) -> str:
        policy = (info.context or {}).get(PATH_POLICY)
        return policy.check(value, writes) if policy is not None else value

    return AfterValidator(check)


InputPath = Annotated[str, _confined(writes=False)]
OutputPath = Annotated[str, _confined(writes=True)]
