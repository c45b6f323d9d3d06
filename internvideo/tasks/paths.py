"""Config fields that name files, and the roots a shared coordinator confines them to.

A field typed ``InputPath`` (read: lists, class names, checkpoints to start from) must resolve
under a data root or the tenant's storage; ``OutputPath`` (written: features) under the tenant's
storage; neither inside the coordinator's own state, confined or not. Resolving
means ``realpath``: ``..`` and every symlink on the way are followed before the check, so a link
inside a root that points out of it is outside. The check runs when a config is validated with a
policy in the validation context (the coordinator, at submit); without one — a worker re-reading
an admitted config, a test — paths are taken as given. ``job:<id>`` is not a path: the
coordinator resolves it to that job's checkpoint (the submitting tenant's own job).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Callable, Iterable

from pydantic import AfterValidator, ValidationInfo
from pydantic_core import PydanticCustomError

JOB_REF = "job:"  # a config value "job:<id>": that job's final committed checkpoint
PATH_POLICY = "path_policy"  # the validation-context key
OUTSIDE_ROOTS = "path_outside_roots"  # the error type a caller can tell apart from a malformed config


def is_job_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(JOB_REF) and len(value) > len(JOB_REF)


def _under(path: str, folder: str) -> bool:
    return os.path.commonpath((path, folder)) == folder


def _resolved(paths: Iterable[str | os.PathLike]) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in paths)


@dataclasses.dataclass(frozen=True)
class PathPolicy:
    """Where one tenant's configs may point. ``data_roots`` are shared (datasets, read only); None:
    paths are not confined (a coordinator of one user). ``storage_roots`` are the tenant's own folders
    of the shared storage (``for_tenant``). ``private``: folders no config may write to, nor read from
    but where ``readable`` says (a resolved path → whether this tenant may read it): the coordinator's
    own state, whose database and tokens nobody may name, and whose job folders only their own
    tenant's configs may (a checkpoint to resume from or start from)."""

    data_roots: tuple[str, ...] | None
    storage_roots: tuple[str, ...] = ()
    private: tuple[str, ...] = ()
    readable: Callable[[str], bool] = lambda resolved: False

    @classmethod
    def of(cls, data_roots: Iterable[str | os.PathLike] | None, storage_roots: Iterable[str | os.PathLike] = (),
           private: Iterable[str | os.PathLike] = ()) -> "PathPolicy":
        return cls(None if data_roots is None else _resolved(data_roots), _resolved(storage_roots),
                   _resolved(private))

    def for_tenant(self, tenant: str, readable: Callable[[str], bool] = lambda resolved: False) -> "PathPolicy":
        """The policy of one tenant: of each storage root, only its own folder ``<root>/<tenant>``; of the
        private folders, what ``readable`` allows it."""
        return dataclasses.replace(self, storage_roots=tuple(os.path.join(r, tenant) for r in self.storage_roots),
                                   readable=readable)

    def check(self, value: str, writes: bool) -> str:
        if is_job_ref(value):
            return value
        confined = self.data_roots is not None
        if confined and not os.path.isabs(value):
            raise PydanticCustomError(OUTSIDE_ROOTS, "{value} is relative: the coordinator and the workers resolve "
                                      "it against different folders; give an absolute path", {"value": value})
        resolved = os.path.realpath(value)
        if any(_under(resolved, folder) for folder in self.private):
            if not writes and self.readable(resolved):
                return value
            raise PydanticCustomError(OUTSIDE_ROOTS, "{value} resolves to {resolved}, inside the coordinator's own "
                                      "state, where this tenant may read only its own jobs' folders",
                                      {"value": value, "resolved": resolved})
        if not confined:
            return value
        roots = self.storage_roots if writes else (*self.data_roots, *self.storage_roots)
        if not any(_under(resolved, root) for root in roots):
            what = "this tenant's storage folders" if writes else "the data roots or this tenant's storage folders"
            raise PydanticCustomError(OUTSIDE_ROOTS, "{value} resolves to {resolved}, outside {what} ({roots})",
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
