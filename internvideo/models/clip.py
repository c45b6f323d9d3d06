"""The multimodal encoder: CLIP's image and text transformers, the image side made a video encoder
by UniFormerV2's global UniBlocks (InternVideo's video–language branch), in one file.

Video side (``VideoCLIPVisual``), following OpenAI CLIP and UniFormerV2 (``uniformerv2.py``):

1. Every frame goes through CLIP's ViT (patch embedding, class token, positions, ``ln_pre``,
   residual attention blocks) — frames are independent there; an image is a one-frame clip.
   Optionally each block first applies a *local temporal MHRA*: a depthwise temporal conv over
   each patch's track, zero-initialised so that it starts as the identity.
2. In the last ``global_layers`` blocks the tokens of all frames also feed a *global UniBlock*:
   a depthwise 3D convolution adds a dynamic position encoding to the patch tokens, and an
   *extractor* — cross-attention from one learnable query to every token of every frame, then an
   MLP, both output projections zero-initialised — refines the video token layer after layer.
3. The video token and the mean over frames of CLIP's class token are fused through a sigmoid
   balance, then ``ln_post`` and ``proj`` map it into the joint embedding space.

Text side (``CLIPText``): CLIP's causal transformer over 77 tokens, pooled at the end-of-text
token (the largest id of a sequence), projected into the same space.

Parameter names follow the OpenAI CLIP checkpoints (``conv1``, ``class_embedding``,
``transformer.resblocks.N.attn.in_proj_weight``, ``ln_post``, ``proj``, ...) and UniFormerV2's
(``transformer.dpe``, ``transformer.dec``, ``transformer.temporal_cls_token``,
``transformer.balance``); ``internvideo.checkpoints`` maps OpenAI and Hugging Face files onto them.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from internvideo.models.layers import DropPath, run_block
from internvideo.models.tokenizer import CLIPTokenizer
from internvideo.models.vit import divisible

CLIP_NORM_EPS = 1e-5  # torch's LayerNorm default, as OpenAI CLIP


class TowerConfig(BaseModel):
    """The shape of a transformer tower (CLIP's image and text towers, the caption decoder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    use_checkpoint: bool = False  # activation checkpointing per block

    _heads_divide_width = divisible("width", "heads", on="heads")


class CLIPVisualConfig(TowerConfig):
    patch_size: int = Field(gt=0)
    image_size: int = Field(default=224, gt=0)
    output_dim: int = Field(gt=0)
    num_frames: int = Field(default=8, gt=0)
    global_layers: int = Field(default=4, ge=0)  # UniBlocks on the last N blocks; 0: plain CLIP
    local_mhra: bool = False  # local temporal MHRA before each block's attention
    dpe_kernel: int = Field(default=3, gt=0)
    drop_path_rate: float = Field(default=0.0, ge=0.0, lt=1.0)

    _patch_divides_image = divisible("image_size", "patch_size", on="image_size")

    @model_validator(mode="after")
    def _global_layers_fit(self) -> "CLIPVisualConfig":
        if self.global_layers > self.layers:
            raise ValueError(f"global_layers ({self.global_layers}) exceeds layers ({self.layers})")
        return self

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class CLIPTextConfig(TowerConfig):
    output_dim: int = Field(gt=0)
    vocab_size: int = Field(default=49408, gt=0)
    context_length: int = Field(default=77, gt=0)


class VideoCLIPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    visual: CLIPVisualConfig
    text: CLIPTextConfig

    @model_validator(mode="after")
    def _same_space(self) -> "VideoCLIPConfig":
        if self.visual.output_dim != self.text.output_dim:
            raise ValueError(f"visual.output_dim ({self.visual.output_dim}) must equal "
                             f"text.output_dim ({self.text.output_dim})")
        return self


# What a plain CLIP checkpoint lacks: the UniBlocks and the local temporal MHRA (zero-initialised,
# so a model loaded from CLIP starts as CLIP).
UNIBLOCK_KEYS = ("visual.transformer.dpe.*", "visual.transformer.dec.*", "visual.transformer.temporal_cls_token",
                 "visual.transformer.balance", "visual.transformer.resblocks.*.lmhra.*")

# Published OpenAI CLIP shapes.
CLIP_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "ViT-B/16": {"visual": {"width": 768, "layers": 12, "heads": 12, "patch_size": 16, "output_dim": 512},
                 "text": {"width": 512, "layers": 12, "heads": 8, "output_dim": 512}},
    "ViT-L/14": {"visual": {"width": 1024, "layers": 24, "heads": 16, "patch_size": 14, "output_dim": 768},
                 "text": {"width": 768, "layers": 12, "heads": 12, "output_dim": 768}},
}


def video_clip_config(size: str, *, visual: dict[str, Any] | None = None,
                      text: dict[str, Any] | None = None) -> VideoCLIPConfig:
    """The published CLIP ``size`` with UniBlocks, ``visual``/``text`` overriding fields."""
    return VideoCLIPConfig(visual=clip_visual_config(size, **(visual or {})),
                           text=CLIPTextConfig(**{**_clip_shape(size)["text"], **(text or {})}))


def clip_visual_config(size: str, **overrides: Any) -> CLIPVisualConfig:
    """The video tower of the published CLIP ``size`` alone (a classifier has no text tower)."""
    return CLIPVisualConfig(**{**_clip_shape(size)["visual"], **overrides})


def _clip_shape(size: str) -> dict[str, dict[str, Any]]:
    if size not in CLIP_SIZES:
        raise ValueError(f"unknown CLIP size {size!r}; valid sizes: {', '.join(CLIP_SIZES)}")
    return CLIP_SIZES[size]


# -----------------------------------------------------------------------------
# Blocks


class QuickGELU(nn.Module):
    """CLIP's activation, x·σ(1.702x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPMlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, dim)


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (so CLIP checkpoints load as they are) on
    ``scaled_dot_product_attention``; batch first. Keys and values may come from another sequence."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, context: Tensor | None = None, causal: bool = False) -> Tensor:
        # x: (B, N, C) queries; context: (B, M, C) keys and values (default: x).
        b, n, c = x.shape
        w_q, w_kv = self.in_proj_weight.split([c, 2 * c])
        b_q, b_kv = self.in_proj_bias.split([c, 2 * c])
        q = F.linear(x, w_q, b_q)
        k, v = F.linear(x if context is None else context, w_kv, b_kv).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, h, ·, d)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class LocalTemporalMHRA(nn.Module):
    """UniFormerV2's local temporal relation: per patch position, a depthwise conv over time in a
    reduced width. The last projection starts at zero, so the block starts as the identity."""

    def __init__(self, dim: int, reduction: float = 1.5, kernel: int = 3) -> None:
        super().__init__()
        hidden = int(dim // reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(dim),
            nn.Conv3d(dim, hidden, kernel_size=1),
            nn.Conv3d(hidden, hidden, kernel_size=(kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=hidden),
            nn.Conv3d(hidden, dim, kernel_size=1),
        )
        nn.init.zeros_(self.pos_embed[3].weight)
        nn.init.zeros_(self.pos_embed[3].bias)

    def forward(self, patches: Tensor) -> Tensor:
        return self.pos_embed(patches)  # (B, C, T, H, W)


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-norm block; with ``local_mhra``, UniFormerV2's local temporal MHRA first."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 local_mhra: bool = False) -> None:
        super().__init__()
        self.lmhra = LocalTemporalMHRA(dim) if local_mhra else None
        self.ln_1 = nn.LayerNorm(dim, eps=CLIP_NORM_EPS)
        self.attn = MultiheadAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=CLIP_NORM_EPS)
        self.mlp = CLIPMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, causal: bool = False, frames: int = 1) -> Tensor:
        # x: (B·T, 1 + H·W, C) for video frames, (B, N, C) for text.
        if self.lmhra is not None:
            x = x + self.drop_path(_over_patches(self.lmhra, x, frames))
        x = x + self.drop_path(self.attn(self.ln_1(x), causal=causal))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


def _over_patches(conv: nn.Module, x: Tensor, frames: int) -> Tensor:
    """Apply a (B, C, T, H, W) module to the patch tokens of (B·T, 1 + H·W, C) frame tokens; the class
    tokens get zeros (they are not on the grid)."""
    bt, n, c = x.shape
    side = math.isqrt(n - 1)
    patches = x[:, 1:].reshape(bt // frames, frames, side, side, c).permute(0, 4, 1, 2, 3)
    out = conv(patches).permute(0, 2, 3, 4, 1).reshape(bt, n - 1, c)
    return torch.cat([torch.zeros_like(x[:, :1]), out], dim=1)


class Extractor(nn.Module):
    """UniFormerV2's global UniBlock decoder: the video query attends to every token of every frame,
    then an MLP. Output projections start at zero, so a new UniBlock passes the query through."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=CLIP_NORM_EPS)  # the query
        self.ln_3 = nn.LayerNorm(dim, eps=CLIP_NORM_EPS)  # the tokens
        self.attn = MultiheadAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=CLIP_NORM_EPS)
        self.mlp = CLIPMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for projection in (self.attn.out_proj, self.mlp.c_proj):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)
        nn.init.xavier_uniform_(self.mlp.c_fc.weight)

    def forward(self, query: Tensor, tokens: Tensor) -> Tensor:
        # query: (B, 1, C); tokens: (B, T·(1 + H·W), C)
        query = query + self.drop_path(self.attn(self.ln_1(query), self.ln_3(tokens)))
        return query + self.drop_path(self.mlp(self.ln_2(query)))


class Transformer(nn.Module):
    """CLIP's block stack; on the video side also the UniBlocks of the last ``global_layers``."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, *, global_layers: int = 0,
                 local_mhra: bool = False, dpe_kernel: int = 3, drop_path_rate: float = 0.0,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        rates = torch.linspace(0, drop_path_rate, layers, device="cpu").tolist()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio, rate, local_mhra)
                                       for rate in rates)
        self.global_layers = global_layers
        if global_layers:
            self.dpe = nn.ModuleList(nn.Conv3d(width, width, dpe_kernel, padding=dpe_kernel // 2, groups=width)
                                     for _ in range(global_layers))
            for conv in self.dpe:
                nn.init.zeros_(conv.bias)
            self.dec = nn.ModuleList(Extractor(width, heads, mlp_ratio, rate) for rate in rates[-global_layers:])
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, width))
            self.balance = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor, causal: bool = False, frames: int = 1) -> tuple[Tensor, Tensor | None]:
        """Tokens after the last block ((B·T, 1 + H·W, C) for video frames, (B, N, C) for text) and,
        with UniBlocks, the video query they refined (B, 1, C)."""
        first_global = len(self.resblocks) - self.global_layers
        query = self.temporal_cls_token.expand(x.shape[0] // frames, -1, -1) if self.global_layers else None
        for i, block in enumerate(self.resblocks):
            x = run_block(block, x, causal, frames, use_checkpoint=self.use_checkpoint)
            if i >= first_global:
                j = i - first_global
                tokens = x + _over_patches(self.dpe[j], x, frames)  # dynamic position encoding
                query = self.dec[j](query, tokens.reshape(x.shape[0] // frames, -1, x.shape[-1]))
        return x, query


# -----------------------------------------------------------------------------
# Encoders


class VideoCLIPVisual(nn.Module):
    """CLIP's image transformer over the frames of a clip, with UniBlocks: (B, C, T, H, W) → (B, D)."""

    def __init__(self, config: CLIPVisualConfig) -> None:
        super().__init__()
        self.config = config
        width, scale = config.width, config.width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=CLIP_NORM_EPS)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio,
                                       global_layers=config.global_layers, local_mhra=config.local_mhra,
                                       dpe_kernel=config.dpe_kernel, drop_path_rate=config.drop_path_rate,
                                       use_checkpoint=config.use_checkpoint)
        self.ln_post = nn.LayerNorm(width, eps=CLIP_NORM_EPS)
        self.proj = nn.Parameter(scale * torch.randn(width, config.output_dim))

    def forward(self, video: Tensor) -> Tensor:
        """Embeddings (B, output_dim) of normalised clips (B, 3, T, H, W); an image is T = 1."""
        return self.features(video) @ self.proj

    def features(self, video: Tensor) -> Tensor:
        """The video token before the projection into the joint space (B, width): what a
        classifier's head reads (UniFormerV2)."""
        return self.ln_post(self._run(video)[0])

    def encode(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """The embeddings (B, output_dim) and the last layer's tokens of every frame, normalised
        (B, T·(1 + H'·W'), width): what a caption decoder or another model attends to."""
        pooled, tokens = self._run(video)
        return self.ln_post(pooled) @ self.proj, self.ln_post(tokens)

    def context(self, video: Tensor) -> Tensor:
        """What another model attends to: the video token (where the UniBlocks fused the frames; what
        a classifier's head reads) followed by every frame's last-layer tokens, normalised
        (B, 1 + T·(1 + H'·W'), width)."""
        pooled, tokens = self._run(video)
        return self.ln_post(torch.cat([pooled[:, None], tokens], dim=1))

    def _run(self, video: Tensor) -> tuple[Tensor, Tensor]:
        b, _, t, _, _ = video.shape
        frames = video.transpose(1, 2).flatten(0, 1)  # (B·T, 3, H, W)
        x = self.conv1(frames).flatten(2).transpose(1, 2)  # (B·T, H'·W', C)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B·T, 1 + H'·W', C)
        x, query = self.transformer(self.ln_pre(x), frames=t)
        video = x[:, 0].reshape(b, t, -1).mean(dim=1)  # the frames' class tokens, averaged (B, C)
        if query is not None:  # fused with the UniBlocks' video token through the learned balance
            weight = torch.sigmoid(self.transformer.balance)
            video = (1 - weight) * query[:, 0] + weight * video
        return video, x.reshape(b, -1, x.shape[-1])  # (B, width) pooled, (B, T·(1 + H'·W'), width)


class CLIPText(nn.Module):
    """CLIP's text transformer: token ids (B, context_length) → embeddings (B, output_dim)."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio,
                                       use_checkpoint=config.use_checkpoint)
        self.ln_final = nn.LayerNorm(config.width, eps=CLIP_NORM_EPS)
        self.text_projection = nn.Parameter(torch.empty(config.width, config.output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=config.width**-0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (B, N, C)
        x = self.ln_final(self.transformer(x, causal=True)[0])
        end_of_text = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (B, C)
        return end_of_text @ self.text_projection  # (B, output_dim)


class CLIPVideoClassifier(nn.Module):
    """The video encoder with a linear head on its video token (UniFormerV2's classifier): supervised
    post-pretraining of the multimodal encoder. ``tokens`` and ``classify`` split it where another
    model may join in (``models.interaction``); ``readout`` names the modules ``classify`` uses."""

    readout = ("head_dropout", "head")

    def __init__(self, config: CLIPVisualConfig, num_classes: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.token_dim, self.num_queries = config.width, 1
        self.visual = VideoCLIPVisual(config)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(config.width, num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def tokens(self, video: Tensor) -> Tensor:
        """The video token, then every frame's tokens (B, 1 + T·(1 + H'·W'), width): ``VideoCLIPVisual.context``."""
        return self.visual.context(video)

    def queries(self, tokens: Tensor) -> Tensor:
        """The tokens ``classify`` reads: the video token alone (B, 1, width)."""
        return tokens[:, :1]

    def classify(self, tokens: Tensor) -> Tensor:
        """Logits (B, num_classes) from the video token of ``tokens``."""
        return self.head(self.head_dropout(tokens[:, 0]))

    def features(self, video: Tensor) -> Tensor:
        """Each clip's feature (B, width): its video token, what the head reads."""
        return self.visual.features(video)

    def forward(self, video: Tensor) -> Tensor:
        """Logits (B, num_classes) of normalised clips (B, 3, T, H, W)."""
        return self.head(self.head_dropout(self.features(video)))


class VideoCLIP(nn.Module):
    """Video and text encoders in one embedding space, with CLIP's learnable temperature."""

    def __init__(self, config: VideoCLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VideoCLIPVisual(config.visual)
        self.text = CLIPText(config.text)
        # Shape (1,), not CLIP's 0-d scalar: DeepSpeed cannot broadcast a 0-d parameter (the loader
        # maps either shape onto the other).
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def encode_video(self, video: Tensor) -> Tensor:
        return F.normalize(self.visual(video), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.text(tokens), dim=-1)

    def temperature(self) -> Tensor:
        """exp(logit_scale), clamped at 100 as CLIP does."""
        return self.logit_scale.exp().clamp(max=100.0).squeeze(0)

    def forward(self, video: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised video and text embeddings and the logit scale."""
        return self.encode_video(video), self.encode_text(tokens), self.temperature()


# CLIP's Kinetics prompts (openai/CLIP, data/prompts.md): 4 prefixes × 7 forms of an action.
KINETICS_TEMPLATES: tuple[str, ...] = tuple(
    f"{prefix} {form}" for prefix in ("a photo of", "a video of", "a example of", "a demonstration of")
    for form in ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
                 "a person performing {}.", "a person practicing {}."))


@torch.no_grad()
def zero_shot_classifier(model: VideoCLIP, tokenizer: CLIPTokenizer, class_names: list[str],
                         templates: tuple[str, ...] = KINETICS_TEMPLATES) -> Tensor:
    """One unit text embedding per class (num_classes, D): every template filled with the class
    name, each embedding normalised, averaged and normalised again (CLIP's prompt ensembling).
    A video's class scores are then its normalised embedding times these, transposed."""
    if not class_names or any(not name.strip() for name in class_names):
        raise ValueError(f"class names must be non-empty, got {class_names[:5]}")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a {{}} for the class name, got {list(templates)[:3]}")
    context = model.config.text.context_length
    device = model.logit_scale.device
    weights = []
    for name in class_names:
        tokens = tokenizer.tokenize([t.format(name) for t in templates], context_length=context).to(device)
        weights.append(F.normalize(model.encode_text(tokens).mean(dim=0), dim=-1))
    return torch.stack(weights)
