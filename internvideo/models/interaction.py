"""Model interaction (InternVideo's cross-model attention): one frozen classifier's tokens attend to
another frozen classifier's, through gated cross-attention and feed-forward blocks.

Every gate is ``tanh(α)`` with α initialised to zero, so a freshly built interaction changes
nothing — the combined model starts exactly as the base classifier — and training opens the gates
as far as the other model helps: the blocks' gates, and a gate on the other classifier's own logits
(its readout, e.g. a post-pretrained head), so the two models' evidence can also add up at the end,
as InternVideo's predictions combine both models. The paper's base is the multimodal encoder
(UniFormerV2's video token queries VideoMAE's tokens); either way round works here.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from internvideo.models.clip import MultiheadAttention
from internvideo.models.layers import LAYER_NORM_EPS, Mlp


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


class TokenClassifier(Protocol):
    """A classifier split where another model may join in: ``VideoClassifier``, ``CLIPVideoClassifier``."""

    token_dim: int
    num_queries: int  # how many tokens ``queries`` keeps
    readout: tuple[str, ...]  # the child modules ``classify`` uses

    def tokens(self, video: Tensor) -> Tensor: ...
    def queries(self, tokens: Tensor) -> Tensor: ...  # the tokens ``classify`` reads
    def classify(self, tokens: Tensor) -> Tensor: ...


class InteractionClassifier(nn.Module):
    """``base``'s tokens consult ``other``'s before ``base`` classifies them; ``other``'s own logits add
    in through a gate. Both encoders are frozen; the interaction, the gate and both readouts train.
    ``views``: what each model sees of the clip (its frames, its normalisation), if not the clip itself."""

    def __init__(self, base: TokenClassifier, other: TokenClassifier, heads: int, depth: int = 1,
                 views: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None = None) -> None:
        super().__init__()
        self.base, self.other = base, other
        self.views = views or (_whole_clip, _whole_clip)
        self.interaction = ModelInteraction(base.token_dim, other.token_dim, heads, depth)
        self.other_gate = nn.Parameter(torch.zeros(1))
        for model in (base, other):
            for name, child in model.named_children():
                child.requires_grad_(name in model.readout)

    def train(self, mode: bool = True) -> "InteractionClassifier":
        super().train(mode)
        for model in (self.base, self.other):  # frozen encoders: no dropout, no drop path, whatever the mode
            model.eval()
            for name in model.readout:
                getattr(model, name).train(mode)
        return self

    def forward(self, video: Tensor) -> Tensor:
        """Logits (B, num_classes) of normalised clips (B, 3, T, H, W)."""
        base_view, other_view = self.views
        with torch.no_grad():
            tokens, other = self.base.tokens(base_view(video)), self.other.tokens(other_view(video))
        # Only the tokens the base's readout reads consult the other model (CLIP's: its video token).
        logits = self.base.classify(self.interaction(self.base.queries(tokens), other))
        return logits + torch.tanh(self.other_gate) * self.other.classify(other)


def _whole_clip(video: Tensor) -> Tensor:
    return video
