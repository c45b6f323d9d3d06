"""``post-pretrain``: InternVideo's supervised post-pretraining — either encoder trained on the
classes of several datasets merged into one label space (Kinetics-710 style: ``data.merge`` names
each dataset's list and class names; classes with the same name share an id).

Its defaults are a pretraining's, not a fine-tuning's: no Mixup or CutMix, one learning rate for
every layer, no moving average; label smoothing 0.1 and drop path 0.1 stay."""
from __future__ import annotations

from pydantic import Field

from internvideo.tasks import register_task
from internvideo.tasks.classification import Classification, ClassificationConfig, Regularization


class PostPretrainRegularization(Regularization):
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)


class PostPretrainConfig(ClassificationConfig):
    regularization: PostPretrainRegularization = Field(default_factory=PostPretrainRegularization)


@register_task
class PostPretrain(Classification):
    kind = "post-pretrain"
    config_type = PostPretrainConfig
