"""Video–text contrastive loss (CLIP/InfoNCE) over the global batch.

Each rank scores its own clips against the captions of every rank (and its captions against
every rank's clips): features are all-gathered with ``torch.distributed.nn.functional.all_gather``,
whose backward sends each rank the gradient that all ranks' losses put on its features. With
gradients averaged across ranks (as DDP and DeepSpeed do), training is then exactly that of one
process over the concatenated batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def gather_with_grad(features: Tensor) -> tuple[Tensor, int]:
    """(all ranks' ``features`` concatenated in rank order, where this rank's rows start)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, 0
    from torch.distributed.nn.functional import all_gather  # autograd-aware collective

    return torch.cat(all_gather(features), dim=0), dist.get_rank() * features.shape[0]


def contrastive_loss(video: Tensor, text: Tensor, temperature: Tensor) -> Tensor:
    """Symmetric InfoNCE of matching (video_i, text_i) pairs, normalised features (B, D) each;
    ``temperature`` multiplies the cosine similarities (CLIP's exp(logit_scale), ≤ 100)."""
    all_video, offset = gather_with_grad(video)
    all_text, _ = gather_with_grad(text)
    labels = torch.arange(video.shape[0], device=video.device) + offset
    video_to_text = temperature * video @ all_text.t()  # (B, B·world)
    text_to_video = temperature * text @ all_video.t()
    return (F.cross_entropy(video_to_text, labels) + F.cross_entropy(text_to_video, labels)) / 2


def gather_without_grad(features: Tensor) -> tuple[Tensor, int]:
    """(all ranks' ``features`` concatenated in rank order, where this rank's rows start), no graph."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, 0
    parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, features.contiguous())
    return torch.cat(parts, dim=0), dist.get_rank() * features.shape[0]


def embedding_gradients(video: Tensor, text: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first half of a GradCache step: from this rank's embeddings of its whole share of the
    global batch, computed without a graph, the InfoNCE loss over every rank's pairs and its
    gradient on this rank's embeddings and on the temperature. Back-propagating
    ``(video·g_video).sum() + (text·g_text).sum()`` through the encoders, micro-batch by micro-batch,
    then gives each rank its share of the global loss's gradient: the negatives are the whole global
    batch whatever the world size and accumulation. Returns (loss, g_video, g_text, g_temperature)."""
    all_video, offset = gather_without_grad(video.detach())
    all_text, _ = gather_without_grad(text.detach())
    all_video.requires_grad_()
    all_text.requires_grad_()
    temperature = temperature.detach().requires_grad_()
    labels = torch.arange(all_video.shape[0], device=video.device)
    logits = temperature * all_video @ all_text.t()  # (G, G)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    g_video, g_text, g_temperature = torch.autograd.grad(loss, (all_video, all_text, temperature))
    rows = slice(offset, offset + video.shape[0])
    return loss.detach(), g_video[rows], g_text[rows], g_temperature
