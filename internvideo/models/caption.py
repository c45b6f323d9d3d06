"""CoCa-style caption decoder: attention-pooled visual queries, then a causal text decoder whose
blocks cross-attend to them, trained with the next-token loss.

The pooler turns any number of visual tokens (all frames' tokens of the video encoder) into a
fixed set of ``num_queries`` learned queries' answers, so the decoder's cost does not grow with
the clip length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from internvideo.models.clip import CLIP_NORM_EPS, CLIPMlp, MultiheadAttention, TowerConfig
from internvideo.models.layers import run_block


class CaptionDecoderConfig(TowerConfig):
    visual_dim: int = Field(gt=0)
    vocab_size: int = Field(default=49408, gt=0)
    context_length: int = Field(default=77, gt=0)
    num_queries: int = Field(default=256, gt=0)
    pad_id: int = Field(default=0, ge=0)


class AttentionPooler(nn.Module):
    """``num_queries`` learned queries cross-attend to the visual tokens: (B, N, Dv) → (B, Q, D)."""

    def __init__(self, width: int, visual_dim: int, heads: int, num_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.ln_k = nn.LayerNorm(visual_dim, eps=CLIP_NORM_EPS)
        self.kv_proj = nn.Linear(visual_dim, width)
        self.ln_q = nn.LayerNorm(width, eps=CLIP_NORM_EPS)
        self.attn = MultiheadAttention(width, heads)

    def forward(self, visual: Tensor) -> Tensor:
        context = self.kv_proj(self.ln_k(visual))
        query = self.ln_q(self.query).expand(visual.shape[0], -1, -1)
        return self.attn(query, context)


class CaptionBlock(nn.Module):
    """Causal self-attention, cross-attention to the pooled visual queries, MLP; pre-norm."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=CLIP_NORM_EPS)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=CLIP_NORM_EPS)
        self.cross_attn = MultiheadAttention(width, heads)
        self.ln_3 = nn.LayerNorm(width, eps=CLIP_NORM_EPS)
        self.mlp = CLIPMlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, visual: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), causal=True)
        x = x + self.cross_attn(self.ln_2(x), visual)
        return x + self.mlp(self.ln_3(x))


class CaptionDecoder(nn.Module):
    def __init__(self, config: CaptionDecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.use_checkpoint = config.use_checkpoint
        self.pooler = AttentionPooler(config.width, config.visual_dim, config.heads, config.num_queries)
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.randn(config.context_length, config.width) * 0.01)
        self.blocks = nn.ModuleList(CaptionBlock(config.width, config.heads, config.mlp_ratio)
                                    for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width, eps=CLIP_NORM_EPS)
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, visual: Tensor, tokens: Tensor) -> Tensor:
        """Next-token logits (B, N, vocab) for caption ``tokens`` (B, N) given visual tokens (B, M, Dv)."""
        pooled = self.pooler(visual)  # (B, Q, D)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = run_block(block, x, pooled, use_checkpoint=self.use_checkpoint)
        return self.lm_head(self.ln_final(x))

    def loss(self, visual: Tensor, tokens: Tensor) -> Tensor:
        """Mean cross-entropy of each next token; padding is not predicted."""
        logits = self(visual, tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=self.config.pad_id)

    def loss_per_caption(self, visual: Tensor, tokens: Tensor) -> Tensor:
        """Each caption's mean next-token cross-entropy (B,). Their mean weighs every caption alike
        however the batch is split, which a mean over all tokens of a micro-batch does not."""
        logits = self(visual, tokens[:, :-1])
        targets = tokens[:, 1:]
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=self.config.pad_id,
                                    reduction="none")  # (B, N-1), 0 at padding
        return per_token.sum(dim=1) / (targets != self.config.pad_id).sum(dim=1).clamp(min=1)
