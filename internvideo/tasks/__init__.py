"""Job kinds: each maps to the validated config schema its trainers run."""
from __future__ import annotations

from pydantic import BaseModel

from internvideo.tasks.pretrain_mae import KIND as PRETRAIN_MAE
from internvideo.tasks.pretrain_mae import PretrainMAEConfig

JOB_CONFIGS: dict[str, type[BaseModel]] = {PRETRAIN_MAE: PretrainMAEConfig}
