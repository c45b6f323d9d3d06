"""Transformer building blocks for video ViTs.

The module and parameter names follow the official VideoMAE code
(MCG-NJU/VideoMAE, ``modeling_finetune.py``) so that its checkpoints load
key-for-key: ``patch_embed.proj``, ``attn.qkv`` / ``attn.q_bias`` /
``attn.v_bias``, ``mlp.fc1`` / ``mlp.fc2``, ``gamma_1`` / ``gamma_2``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6


class PatchEmbed3D(nn.Module):
    """Cut a clip into non-overlapping tubelets and project each to ``embed_dim``.

    Tokens come out t-major, i.e. in (t, h, w) raster order; ``videomae_targets``
    and the position tables rely on that order.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        num_frames: int = 16,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_frames = num_frames
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = TubeletProjection(
            in_chans,
            embed_dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, T, H, W)
        _, _, t, h, w = x.shape
        if (t, h, w) != (self.num_frames, self.img_size, self.img_size):
            # The position table is built for one fixed grid, so any other size
            # would silently misalign positions.
            raise ValueError(
                f"input clip is {t}x{h}x{w} (T x H x W) but the model was built for "
                f"{self.num_frames}x{self.img_size}x{self.img_size}"
            )
        return self.proj(x)  # (B, N, C)


class TubeletProjection(nn.Conv3d):
    """A convolution whose stride is its kernel, giving its outputs as tokens: (B, C, T, H, W) -> (B, N, D),
    t-major. It stays a ``Conv3d`` (the weights' layout and names, hooks such as ZeRO-3's) but on a GPU
    runs as one matmul over the flattened tubelets (``tubelet_linear``).

    On an H100, cuDNN ran ViT-B's bf16 patch embedding as an implicit-GEMM kernel: 4.5 ms forward (118
    GFLOP, ~26 TFLOP/s) and 2.6 ms backward of a 48 ms step (``benchmarks/results/gpu_suite_h100.json``),
    where cuBLAS runs the blocks' matmuls at several hundred TFLOP/s. On this repository's 2-core CPU,
    oneDNN's convolution was the faster (125 against 161 ms forward and backward at ViT-B's clip size,
    batch 4, one measurement by a script not kept), so CPUs keep it.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            return tubelet_linear(x, self)
        return super().forward(x).flatten(2).transpose(1, 2)


def tubelet_linear(x: Tensor, proj: nn.Conv3d) -> Tensor:
    """``proj`` (stride = kernel, no padding) over the tubelets of ``x`` as one matmul: (B, N, D)."""
    pt, ph, pw = proj.kernel_size
    tubelets = rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)
    return F.linear(tubelets, proj.weight.flatten(1), proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's bias layout.

    ``qkv`` has no bias of its own; when ``qkv_bias`` is set, learnable
    ``q_bias`` and ``v_bias`` are used and the key bias is fixed at zero (a key
    bias only shifts every logit of a query by the same amount, so it is
    redundant under softmax).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape  # (B, N, C)
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)  # (B, N, 3C)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim); scale = head_dim**-0.5
        x = x.transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """Two-layer feed-forward network with GELU."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, N, C)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = x.new_empty(shape).bernoulli_(keep_prob)
        # Rescale so the expected branch output is unchanged.
        return x * keep / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class Block(nn.Module):
    """Pre-norm transformer block with optional layer scale (``init_values > 0``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        init_values: float = 0.0,
        norm_eps: float = LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = None
            self.gamma_2 = None

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, N, C)
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        else:
            x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
            x = x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        return x


def sinusoid_position_table(num_positions: int, dim: int) -> Tensor:
    """Fixed 1-D sine-cosine table, shape (1, num_positions, dim).

    Same values as VideoMAE's ``get_sinusoid_encoding_table``: angle
    ``pos / 10000 ** (2 * (j // 2) / dim)``, sine on even and cosine on odd
    channels. Computed in float64 (as the numpy original) and returned as float32.
    """
    pos = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)
    angles = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (N, dim)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)  # (1, N, dim)


def token_order(mask: Tensor) -> Tensor:
    """Each row's token indices (B, N), the visible tokens (False in ``mask``) first, each group in its
    order: ``order[:, :visible]`` picks what ``x[~mask]`` holds and ``order[:, visible:]`` what ``x[mask]``
    does, as gathers of static shape. Boolean indexing must count the selection before it can allocate
    the result (on a GPU, a wait for the device), and torch.compile breaks its graph there."""
    return torch.argsort(mask.to(torch.uint8), dim=1, stable=True)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """The tokens of ``x`` (B, N, C) at ``index`` (B, K), in that order: (B, K, C)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class BlockStack(nn.ModuleList):
    """``depth`` Blocks with drop path growing linearly to ``drop_path_rate``; optional
    activation checkpointing per block (recompute in backward, trading FLOPs for memory)."""

    def __init__(self, dim: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, init_values: float = 0.0, use_checkpoint: bool = False,
                 norm_eps: float = LAYER_NORM_EPS) -> None:
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        super().__init__(Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rate,
                               init_values=init_values, norm_eps=norm_eps) for rate in rates)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor) -> Tensor:
        for block in self:
            x = run_block(block, x, use_checkpoint=self.use_checkpoint)
        return x  # (B, N, C)


def run_block(block: nn.Module, *args: Any, use_checkpoint: bool) -> Tensor:
    """``block(*args)``; with ``use_checkpoint`` (and gradients on) its activations are recomputed in
    the backward pass instead of kept, trading FLOPs for memory."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing on or off in every block stack of ``model`` (the modules with a
    ``use_checkpoint`` switch); returns how many there are."""
    stacks = [m for m in model.modules() if hasattr(m, "use_checkpoint")]
    for stack in stacks:
        stack.use_checkpoint = enabled
    return len(stacks)
