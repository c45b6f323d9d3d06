"""VideoMAE: masked video autoencoder pre-training, in one file.

Follows the official ``PretrainVisionTransformer`` (MCG-NJU/VideoMAE,
``modeling_pretrain.py``) and its loss in ``engine_for_pretraining.py``:

1. The encoder (a ``VideoViTEncoder``) embeds the clip into tubelet tokens and
   runs only on the visible ones (typically 10 %).
2. ``encoder_to_decoder`` projects them to the narrow decoder width.
3. The decoder sees the visible tokens followed by one shared ``mask_token`` per
   hidden position, each plus its fixed sine-cosine position.
4. The head predicts the raw pixels of every hidden tubelet, read from the last
   N_masked decoder outputs; the loss is MSE against the (per-patch normalised)
   pixels of those tubelets.

Module and parameter names match the official checkpoints key-for-key.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from internvideo.models.layers import LAYER_NORM_EPS, BlockStack, gather_tokens, sinusoid_position_table, token_order
from internvideo.models.vit import VideoViTEncoder, ViTConfig, divisible, transformer_flops, vit_config

# -----------------------------------------------------------------------------
# Config


class VideoMAEConfig(BaseModel):
    """Encoder config plus the decoder and masking settings of pre-training.

    The decoder blocks share ``mlp_ratio``, ``qkv_bias``, ``init_values``,
    ``drop_path_rate`` and ``use_checkpoint`` with the encoder, as upstream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: ViTConfig
    decoder_embed_dim: int = Field(gt=0)
    decoder_depth: int = Field(gt=0)
    decoder_num_heads: int = Field(gt=0)
    mask_ratio: float = Field(default=0.9, gt=0.0, lt=1.0)
    norm_pix_loss: bool = True
    decoder_norm_eps: float = Field(default=LAYER_NORM_EPS, gt=0.0)  # the decoder's last norm (Hugging Face: 1e-5)

    _heads_divide_dim = divisible("decoder_embed_dim", "decoder_num_heads", on="decoder_num_heads")

    @property
    def num_masked(self) -> int:
        """Hidden tokens per clip under tube masking (the official ``TubeMaskingGenerator``):
        the same ``int(mask_ratio * H'W')`` spatial positions are hidden in every time slice."""
        t, h, w = self.encoder.grid_size
        return t * int(self.mask_ratio * h * w)


# Published decoder shapes per encoder size: (embed_dim, depth, num_heads).
DECODER_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (96, 4, 3),
    "small": (192, 4, 3),
    "base": (384, 4, 6),
    "large": (512, 4, 8),
    "huge": (640, 4, 8),
    "giant": (512, 4, 8),
}


def videomae_config(
    size: str = "base",
    *,
    img_size: int = 224,
    num_frames: int = 16,
    mask_ratio: float = 0.9,
    encoder_overrides: Optional[dict[str, Any]] = None,
    **decoder_overrides: Any,
) -> VideoMAEConfig:
    """Published VideoMAE config of ``size``.

    ``encoder_overrides`` go to the ``ViTConfig``; ``decoder_overrides`` (e.g.
    ``decoder_depth=8``, ``norm_pix_loss=False``) to the ``VideoMAEConfig``.
    """
    if size not in DECODER_SIZES:
        raise ValueError(f"unknown VideoMAE size {size!r}; valid sizes: {', '.join(DECODER_SIZES)}")
    encoder = vit_config(size, img_size=img_size, num_frames=num_frames, **(encoder_overrides or {}))
    dim, depth, heads = DECODER_SIZES[size]
    decoder = {"decoder_embed_dim": dim, "decoder_depth": depth, "decoder_num_heads": heads}
    return VideoMAEConfig(encoder=encoder, mask_ratio=mask_ratio, **{**decoder, **decoder_overrides})


# -----------------------------------------------------------------------------
# Reconstruction target


@torch.no_grad()
def videomae_targets(
    pixels: Tensor, mask: Tensor, patch_size: int, tubelet_size: int, normalize: bool, num_masked: Optional[int] = None
) -> Tensor:
    """Pixels of the hidden tubelets, (B, N_masked, tubelet * p * p * C).

    ``pixels`` is the un-normalised clip in [0, 1], (B, C, T, H, W). Each
    tubelet is flattened as (p0 p1 p2 c), the order the head predicts in. With
    ``normalize`` every channel of every tubelet is standardised over its
    tubelet * p * p values (unbiased std), which is VideoMAE's default target.
    ``num_masked``: the hidden tubelets in every row of ``mask`` (None: counted from it).
    """
    x = rearrange(
        pixels.float(),
        "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
        p0=tubelet_size,
        p1=patch_size,
        p2=patch_size,
    )  # (B, N, tubelet*p*p, C)
    if normalize:
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    x = rearrange(x, "b n p c -> b n (p c)")  # (B, N, tubelet*p*p*C)
    hidden = int(mask[0].sum()) if num_masked is None else num_masked
    return gather_tokens(x, token_order(mask)[:, mask.shape[1] - hidden:])  # (B, N_masked, tubelet*p*p*C)


# -----------------------------------------------------------------------------
# Model


class VideoMAEDecoder(nn.Module):
    """Narrow transformer that predicts pixels for the mask tokens."""

    def __init__(self, config: VideoMAEConfig) -> None:
        super().__init__()
        enc = config.encoder
        self.blocks = BlockStack(config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads,
                                 mlp_ratio=enc.mlp_ratio, qkv_bias=enc.qkv_bias, drop_path_rate=enc.drop_path_rate,
                                 init_values=enc.init_values, use_checkpoint=enc.use_checkpoint,
                                 norm_eps=enc.norm_eps)
        self.norm = nn.LayerNorm(config.decoder_embed_dim, eps=config.decoder_norm_eps)
        self.head = nn.Linear(config.decoder_embed_dim, enc.patch_dim)

    def forward(self, x: Tensor, num_masked: int) -> Tensor:
        # x: (B, N, D_dec), the mask tokens last.
        x = self.blocks(x)
        return self.head(self.norm(x[:, -num_masked:]))  # (B, N_masked, patch_dim)


class VideoMAEPretrain(nn.Module):
    """VideoMAE encoder-decoder for masked video pre-training."""

    def __init__(self, config: VideoMAEConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = VideoViTEncoder(enc)
        self.encoder_to_decoder = nn.Linear(enc.embed_dim, config.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_embed_dim))
        # Fixed, hence non-persistent (absent from the official checkpoints too).
        self.register_buffer(
            "pos_embed", sinusoid_position_table(enc.num_patches, config.decoder_embed_dim), persistent=False
        )  # (1, N, D_dec)
        self.decoder = VideoMAEDecoder(config)

        # Official pre-training init: xavier-uniform for every Linear of encoder
        # and decoder, while encoder_to_decoder keeps PyTorch's default; the mask
        # token is truncated at +-1 std.
        self.encoder.apply(_init_xavier)
        self.decoder.apply(_init_xavier)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms (as upstream)."""
        return {"mask_token"}

    def forward(self, video: Tensor, mask: Tensor) -> Tensor:
        """Predict the hidden tubelets.

        video: normalised clip (B, C, T, H, W); mask: bool (B, N), True = hidden,
        ``config.num_masked`` in every row (the tube masks the config's data makes). Returns
        (B, N_masked, tubelet * p * p * C), in the order of the True entries of ``mask``.
        """
        b, n = video.shape[0], self.encoder.num_patches
        if mask.dtype != torch.bool or mask.shape != (b, n):
            raise ValueError(f"mask must be a bool tensor of shape ({b}, {n}), got {mask.dtype} {tuple(mask.shape)}")
        hidden = self.config.num_masked
        # Tokens are picked by that count: a mask that hides another number would pick the wrong ones.
        # Checked on the device, with no wait for it (on a GPU, a failure is a device-side assert).
        torch._assert_async((mask.sum(dim=1) == hidden).all(), f"every row of the mask must hide {hidden} tokens")
        order = token_order(mask)
        visible, masked = order[:, :n - hidden], order[:, n - hidden:]
        x_vis = self.encoder_to_decoder(self.encoder(video, visible))  # (B, N_vis, D_dec)
        # Tokens stay in "visible first, then hidden" order; the positions are
        # gathered to match instead of un-shuffling the tokens.
        pos = self.pos_embed.to(x_vis.dtype).expand(b, -1, -1)  # (B, N, D_dec)
        x = torch.cat([x_vis + gather_tokens(pos, visible), self.mask_token + gather_tokens(pos, masked)],
                      dim=1)  # (B, N, D_dec)
        return self.decoder(x, hidden)

    def loss(self, video: Tensor, pixels: Tensor, mask: Tensor) -> Tensor:
        """MSE between predictions for ``video`` (normalised) and targets from ``pixels`` ([0, 1])."""
        return self.reconstruction_loss(self(video, mask), pixels, mask)

    def reconstruction_loss(self, pred: Tensor, pixels: Tensor, mask: Tensor) -> Tensor:
        """MSE of ``pred`` (the forward's output, possibly from an engine wrapper) against the targets."""
        enc = self.config.encoder
        target = videomae_targets(pixels, mask, enc.patch_size, enc.tubelet_size, self.config.norm_pix_loss,
                                  self.config.num_masked)
        return F.mse_loss(pred.float(), target)

    def flops_per_clip(self, training: bool = True) -> float:
        """Matmul FLOPs for one clip at ``config.num_masked`` hidden tokens.

        Patch embedding on all tokens, encoder on the visible ones, decoder on
        all, head on the hidden ones; x3 for forward plus backward.
        """
        enc = self.config.encoder
        n = enc.num_patches
        n_masked = self.config.num_masked
        n_vis = n - n_masked
        d_enc, d_dec = enc.embed_dim, self.config.decoder_embed_dim
        flops = (
            2.0 * n * enc.patch_dim * d_enc  # patch embedding
            + transformer_flops(d_enc, enc.depth, n_vis, enc.mlp_ratio)
            + 2.0 * n_vis * d_enc * d_dec  # encoder_to_decoder
            + transformer_flops(d_dec, self.config.decoder_depth, n, enc.mlp_ratio)
            + 2.0 * n_masked * d_dec * enc.patch_dim  # head
        )
        return 3.0 * flops if training else flops


def _init_xavier(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
