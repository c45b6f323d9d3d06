"""Video ViT backbone: the encoder of VideoMAE (and of InternVideo's video branch), and the
classifier built on it.

Semantics follow the official VideoMAE ``PretrainVisionTransformerEncoder`` and fine-tuning
``VisionTransformer``: tubelet patch embedding, a fixed sine-cosine or a learnable position
embedding, pre-norm blocks that see only the visible (unmasked) tokens, and a final LayerNorm
(replaced, for classification with mean pooling, by a norm after the pooling).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import Tensor, nn

from internvideo.models.layers import (
    LAYER_NORM_EPS,
    BlockStack,
    PatchEmbed3D,
    gather_tokens,
    sinusoid_position_table,
)


def divisible(numerator: str, denominator: str, *, on: str) -> Any:
    """A pydantic validator on field ``on`` checking ``numerator % denominator == 0``.

    It hangs on the later-declared field of the pair, so that the other one is already
    validated and in ``info.data``; an error then names the field a user should change.
    """

    def check(cls: type, value: int, info: ValidationInfo) -> int:
        values = {**info.data, on: value}
        n, d = values.get(numerator), values.get(denominator)
        if n is not None and d is not None and n % d:
            raise ValueError(f"{numerator} ({n}) must be divisible by {denominator} ({d})")
        return value

    return field_validator(on)(check)


class ViTConfig(BaseModel):
    """Shape and regularisation of a video ViT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(gt=0)
    depth: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    qkv_bias: bool = True
    patch_size: int = Field(default=16, gt=0)
    tubelet_size: int = Field(default=2, gt=0)
    in_chans: int = Field(default=3, gt=0)
    img_size: int = Field(default=224, gt=0)
    num_frames: int = Field(default=16, gt=0)
    drop_path_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    init_values: float = Field(default=0.0, ge=0.0)
    use_checkpoint: bool = False
    pos_embed: Literal["sincos", "learnable"] = "sincos"
    norm_eps: float = Field(default=LAYER_NORM_EPS, gt=0.0)  # Hugging Face's VideoMAE uses 1e-12
    final_norm: bool = True  # False: no LayerNorm after the blocks (a pooled classifier norms after pooling)

    _heads_divide_dim = divisible("embed_dim", "num_heads", on="num_heads")
    _patch_divides_image = divisible("img_size", "patch_size", on="img_size")
    _tubelet_divides_frames = divisible("num_frames", "tubelet_size", on="num_frames")

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') after tubelet embedding."""
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_size
        return t * h * w

    @property
    def patch_dim(self) -> int:
        """Values in one tubelet: tubelet * patch * patch * in_chans."""
        return self.tubelet_size * self.patch_size**2 * self.in_chans


# Published ViT widths/depths/heads (giant is the EVA/InternVideo ViT-g/14 shape).
VIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
    "giant": {"embed_dim": 1408, "depth": 40, "num_heads": 16, "mlp_ratio": 48 / 11},
}


def vit_config(size: str, **overrides: Any) -> ViTConfig:
    """Config of a published size, with ``overrides`` taking precedence."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid sizes: {', '.join(VIT_SIZES)}")
    return ViTConfig(**{**VIT_SIZES[size], **overrides})


def transformer_flops(dim: int, depth: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (2 per multiply-add) of ``depth`` blocks on ``tokens`` tokens.

    Per block: qkv + output projection 8·t·d², MLP 4·r·t·d², attention scores
    and the weighted sum of values 4·t²·d. Norms, softmax and biases are ignored.
    """
    t, d = float(tokens), float(dim)
    per_block = 8 * t * d * d + 4 * mlp_ratio * t * d * d + 4 * t * t * d
    return depth * per_block


class VideoViTEncoder(nn.Module):
    """Video ViT that encodes only the visible tokens of a clip."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed3D(
            img_size=config.img_size,
            patch_size=config.patch_size,
            tubelet_size=config.tubelet_size,
            in_chans=config.in_chans,
            embed_dim=config.embed_dim,
            num_frames=config.num_frames,
        )
        table = sinusoid_position_table(self.num_patches, config.embed_dim)  # (1, N, C)
        if config.pos_embed == "learnable":
            self.pos_embed = nn.Parameter(table.clone())
        else:
            # Not persistent: the table is a pure function of the config, and the
            # official checkpoints do not contain it, so state dicts match 1:1.
            self.register_buffer("pos_embed", table, persistent=False)
        self.blocks = BlockStack(config.embed_dim, config.depth, config.num_heads, mlp_ratio=config.mlp_ratio,
                                 qkv_bias=config.qkv_bias, drop_path_rate=config.drop_path_rate,
                                 init_values=config.init_values, use_checkpoint=config.use_checkpoint,
                                 norm_eps=config.norm_eps)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps) if config.final_norm else nn.Identity()
        self.apply(_init_vit_weights)
        if config.pos_embed == "learnable":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        """Encode a clip (B, C, T, H, W): all its tokens, or only those at ``keep`` (B, K) — a masked
        model's visible tokens (``layers.token_order``) — in that order. Returns (B, K or N, C)."""
        x = self.patch_embed(x)  # (B, N, C)
        x = x + self.pos_embed.to(x.dtype)
        if keep is not None:
            x = gather_tokens(x, keep)  # (B, K, C)
        return self.norm(self.blocks(x))


def interpolate_pos_embed(pos_embed: Tensor, from_grid: tuple[int, int, int], to_grid: tuple[int, int, int]) -> Tensor:
    """A learnable position embedding (1, T·H·W, C) trained on ``from_grid`` resized to ``to_grid``
    (other frame counts or resolutions): trilinear over (t, h, w), as the official fine-tuning
    code does spatially (and InternVideo temporally)."""
    if from_grid == to_grid:
        return pos_embed
    t, h, w = from_grid
    if pos_embed.shape[1] != t * h * w:
        raise ValueError(f"position embedding has {pos_embed.shape[1]} positions, grid {from_grid} has {t * h * w}")
    grid = pos_embed.reshape(1, t, h, w, -1).permute(0, 4, 1, 2, 3)  # (1, C, T, H, W)
    grid = F.interpolate(grid.float(), size=to_grid, mode="trilinear", align_corners=False)
    return grid.permute(0, 2, 3, 4, 1).flatten(1, 3).to(pos_embed.dtype)  # (1, T'·H'·W', C)


class ClassifierConfig(BaseModel):
    """A video classifier: the encoder, mean pooling of its tokens, a norm, a linear head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: ViTConfig
    num_classes: int = Field(gt=0)
    head_norm_eps: float = Field(default=LAYER_NORM_EPS, gt=0.0)  # Hugging Face: 1e-5
    head_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    head_init_scale: float = Field(default=1.0, gt=0.0)  # VideoMAE fine-tuning scales the head init (0.001)


def classifier_config(size: str, num_classes: int, **encoder_overrides: Any) -> ClassifierConfig:
    """Published encoder of ``size`` for classification (mean pooling: no final encoder norm)."""
    return ClassifierConfig(encoder=vit_config(size, **{"final_norm": False, **encoder_overrides}),
                            num_classes=num_classes)


class VideoClassifier(nn.Module):
    """Encoder → mean over tokens → ``fc_norm`` → ``head``, as VideoMAE fine-tuning (``use_mean_pooling``).

    ``tokens`` and ``classify`` split it where another model may join in (``models.interaction``);
    ``readout`` names the modules ``classify`` uses."""

    readout = ("fc_norm", "head_dropout", "head")

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.token_dim, self.num_queries = config.encoder.embed_dim, config.encoder.num_patches
        self.encoder = VideoViTEncoder(config.encoder)
        self.fc_norm = nn.LayerNorm(config.encoder.embed_dim, eps=config.head_norm_eps)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.encoder.embed_dim, config.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(config.head_init_scale)

    def tokens(self, video: Tensor) -> Tensor:
        """The encoder's tokens (B, N, C) of normalised clips (B, 3, T, H, W)."""
        return self.encoder(video)

    def queries(self, tokens: Tensor) -> Tensor:
        """The tokens ``classify`` reads: all of them."""
        return tokens

    def pool(self, tokens: Tensor) -> Tensor:
        """The clip's feature (B, C) from its tokens (B, N, C): what the head reads."""
        return self.fc_norm(tokens.mean(dim=1))

    def classify(self, tokens: Tensor) -> Tensor:
        """Logits (B, num_classes) of the tokens (B, N, C)."""
        return self.head(self.head_dropout(self.pool(tokens)))

    def features(self, video: Tensor) -> Tensor:
        """Each clip's feature (B, C): what the head reads."""
        return self.pool(self.tokens(video))

    def forward(self, video: Tensor) -> Tensor:
        return self.classify(self.tokens(video))

    def flops_per_clip(self, training: bool = False) -> float:
        enc = self.config.encoder
        flops = (2.0 * enc.num_patches * enc.patch_dim * enc.embed_dim
                 + transformer_flops(enc.embed_dim, enc.depth, enc.num_patches, enc.mlp_ratio)
                 + 2.0 * enc.embed_dim * self.config.num_classes)
        return 3.0 * flops if training else flops


def _init_vit_weights(m: nn.Module) -> None:
    # timm / VideoMAE fine-tuning init; the Conv3d patch embedding keeps
    # PyTorch's default init, as in the official code.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
