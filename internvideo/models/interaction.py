"""Model interaction (InternVideo's cross-model attention): one frozen encoder's tokens attend to
another frozen encoder's, through gated cross-attention and feed-forward blocks.

The gates are ``tanh(α)`` with α initialised to zero, so a freshly built interaction changes
nothing — the combined model starts exactly as the base model — and training opens the gates
as far as the other model's tokens help. Beside the attention, a linear head reads the other
model's summary token (CLIP's video token) into the logits — zero-initialised here; the
``interaction`` kind starts it from the other model's own classifier head — so the two models'
evidence adds up at the end as well, as InternVideo's predictions combine both models.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from internvideo.models.clip import MultiheadAttention
from internvideo.models.layers import LAYER_NORM_EPS, Mlp
from internvideo.models.vit import VideoClassifier


class GatedCrossBlock(nn.Module):
    def __init__(self, dim: int, other_dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_other = nn.LayerNorm(other_dim, eps=LAYER_NORM_EPS)
        self.other_proj = nn.Linear(other_dim, dim)
        self.cross_attn = MultiheadAttention(dim, heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_mlp = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        # x: (B, N, C) tokens of the base model; other: (B, M, C') tokens of the other model
        context = self.other_proj(self.norm_other(other))  # (B, M, C)
        x = x + torch.tanh(self.attn_gate) * self.cross_attn(self.norm_query(x), context)
        return x + torch.tanh(self.mlp_gate) * self.mlp(self.norm_mlp(x))


class ModelInteraction(nn.Module):
    def __init__(self, dim: int, other_dim: int, heads: int, depth: int = 1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(GatedCrossBlock(dim, other_dim, heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, other)
        return x


class InteractionClassifier(nn.Module):
    """A video classifier whose encoder's tokens consult another encoder's (e.g. VideoMAE's tokens
    attending to the multimodal encoder's). Both encoders are frozen; the interaction, the
    classifier's pooled norm and head, and the head on the other's summary token train."""

    def __init__(self, base: VideoClassifier, other: nn.Module, other_dim: int, heads: int, depth: int = 1) -> None:
        """``other``: any module mapping the same clip (B, C, T, H, W) to tokens (B, M, other_dim), the
        first of which sums the clip up (CLIP's video token)."""
        super().__init__()
        self.base, self.other = base, other
        self.interaction = ModelInteraction(base.config.encoder.embed_dim, other_dim, heads, depth)
        self.other_head = nn.Linear(other_dim, base.config.num_classes)
        nn.init.zeros_(self.other_head.weight)  # adds nothing until trained
        nn.init.zeros_(self.other_head.bias)
        for frozen in (base.encoder, other):
            frozen.requires_grad_(False)

    def train(self, mode: bool = True) -> "InteractionClassifier":
        super().train(mode)
        self.base.encoder.eval()  # frozen: no dropout, no drop path, whatever the mode
        self.other.eval()
        return self

    def forward(self, video: Tensor) -> Tensor:
        with torch.no_grad():
            tokens, other = self.base.encoder(video), self.other(video)
        tokens = self.interaction(tokens, other)
        base = self.base
        logits = base.head(base.head_dropout(base.fc_norm(tokens.mean(dim=1))))
        return logits + self.other_head(other[:, 0])  # (B, num_classes)
