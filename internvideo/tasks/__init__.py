"""The job kinds, found by name: every module of this package, and those named in
``INTERNVIDEO_TASK_MODULES`` (comma-separated; a kind that lives outside the package, such as a
plugin or a test's), registers its ``Task`` with ``@register_task``.

Nothing here names a kind: adding one is adding a module.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Any

from internvideo.tasks.base import Task
from internvideo.tasks.common import ConfigError

__all__ = ["ConfigError", "Task", "TaskRef", "register_task", "task_types", "get_task_type"]

_SHARED = {"base", "common"}  # this package's modules that are not kinds
_REGISTRY: dict[str, type[Task]] = {}
_discovered = False


def register_task(task: type[Task]) -> type[Task]:
    """Class decorator: make ``task`` known by ``task.kind``."""
    known = _REGISTRY.get(task.kind)
    if known is not None and known is not task:
        raise ValueError(f"job kind {task.kind!r} is defined twice: {known.__module__} and {task.__module__}")
    _REGISTRY[task.kind] = task
    return task


def _discover() -> None:
    global _discovered
    names = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if m.name not in _SHARED]
    names += [n.strip() for n in os.environ.get("INTERNVIDEO_TASK_MODULES", "").split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    _discovered = True


def task_types() -> dict[str, type[Task]]:
    """Every known kind, by name."""
    if not _discovered:
        _discover()
    return dict(_REGISTRY)


def get_task_type(kind: str) -> type[Task]:
    kinds = task_types()
    if kind not in kinds:
        raise KeyError(f"unknown job kind {kind!r}; known: {', '.join(sorted(kinds))}")
    return kinds[kind]


@dataclass(frozen=True)
class TaskRef:
    """A job's kind as it travels to the workers: the kind, the module that defines it (imported
    there, so that a kind from outside the package loads too) and the validated config."""

    kind: str
    module: str
    config: dict[str, Any]

    @classmethod
    def of(cls, kind: str, config: dict[str, Any]) -> "TaskRef":
        return cls(kind, get_task_type(kind).__module__, config)

    def load(self) -> Task:
        importlib.import_module(self.module)
        task_type = get_task_type(self.kind)
        return task_type(task_type.config_type.model_validate(self.config))
