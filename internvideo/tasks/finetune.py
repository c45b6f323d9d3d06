"""``finetune``: supervised fine-tuning of a pretrained encoder on one dataset, VideoMAE's recipe by
default — label smoothing 0.1, Mixup 0.8 / CutMix 1.0, drop path 0.1, layer-wise learning-rate
decay 0.75, a moving average of the weights (0.9999). See ``classification.py``."""
from __future__ import annotations

from internvideo.tasks import register_task
from internvideo.tasks.classification import Classification


@register_task
class Finetune(Classification):
    kind = "finetune"
