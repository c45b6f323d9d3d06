"""Every config field that names a file is confined to the coordinator's roots, in every job kind."""
from __future__ import annotations

import typing

from pydantic import BaseModel

from internvideo.tasks import task_types
from internvideo.tasks.paths import InputPath, OutputPath

# Field names that name files in our configs. A kind that adds one must type it InputPath or OutputPath.
PATH_NAMES = ("init", "train_list", "val_list", "classes", "labels", "root", "features", "output", "resume_from")
CONFINING = [typing.get_args(t)[1] for t in (InputPath, OutputPath)]  # their validators


def _models(annotation) -> list[type[BaseModel]]:
    """The config models inside a field's annotation (a section, a list of sections, an optional one)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _confined(metadata: list, annotation) -> bool:
    """Whether the field (``metadata``: pydantic's, of a bare ``InputPath``) or a member of its union
    (``InputPath | None``) carries a confining validator."""
    members = [typing.get_args(arg)[1:] for arg in typing.get_args(annotation)
               if typing.get_origin(arg) is typing.Annotated]
    return any(v is c for v in [*metadata, *(m for ms in members for m in ms)] for c in CONFINING)


def path_fields(model: type[BaseModel], prefix: str = "", seen=None) -> dict[str, object]:
    seen = set() if seen is None else seen
    if model in seen:
        return {}
    seen.add(model)
    found = {}
    for name, field in model.model_fields.items():
        if name in PATH_NAMES:
            found[f"{prefix}{name}"] = _confined(field.metadata, field.annotation)
        for inner in _models(field.annotation):
            found.update(path_fields(inner, f"{prefix}{name}.", seen))
    return found


def test_every_field_that_names_a_file_is_confined_in_every_kind():
    unconfined = {f"{kind}: {path}" for kind, task in task_types().items()
                  for path, confined in path_fields(task.config_type).items() if not confined}
    assert not unconfined
    # The walk found the fields it is about (it is not vacuous).
    fields = {path for task in task_types().values() for path in path_fields(task.config_type)}
    assert {"data.train_list", "data.val_list", "model.init", "train.resume_from", "windows.output",
            "data.merge.train_list"} <= fields
