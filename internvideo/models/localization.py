"""Temporal action localisation on extracted clip features: an anchor-free head in ActionFormer's
shape (Zhang et al., 2022), its training targets and losses, and its post-processing.

``LocalizationHead``: the feature sequence (B, C, T) is embedded by masked 1-D convolutions, then
a pyramid of levels, each a transformer block (self-attention over the valid positions) on a
sequence half as long as the one before. Every position of every level predicts, per class, whether
an action is there (sigmoid) and its distances to the action's start and end (ReLU, in units of
its level's stride). A ground-truth segment is learnt at the positions near its centre
(``center_sample`` strides), on the level whose regression range holds its length; the losses are
the sigmoid focal loss (classification) and the DIoU loss (regression, positives only), each
divided by the number of positives.

``soft_nms``: Gaussian Soft-NMS over 1-D segments (Bodla et al.; ActionFormer's default): instead of
dropping every segment that overlaps a kept one, each later segment's score decays by
``exp(-tIoU² / sigma)`` against the segment just kept, and segments whose score falls under
``min_score`` are dropped. Run per class (``labels``), as ActionFormer's multi-class NMS does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvideo.metrics import temporal_iou


def soft_nms(segments: Tensor, scores: Tensor, labels: Tensor, *, sigma: float = 0.5, min_score: float = 0.001,
             max_segments: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian Soft-NMS per class. ``segments`` (N, 2) in any unit, ``scores`` (N,), ``labels`` (N,).
    Returns the kept (segments, decayed scores, labels), best first, at most ``max_segments``."""
    if segments.ndim != 2 or segments.shape[1] != 2 or not (len(segments) == len(scores) == len(labels)):
        raise ValueError(f"segments (N, 2), scores (N,) and labels (N,) expected, got {tuple(segments.shape)}, "
                         f"{tuple(scores.shape)}, {tuple(labels.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    all_segments, all_scores, all_labels = (t.detach().cpu().numpy() for t in (segments, scores, labels))
    kept: list[tuple[float, int]] = []  # (decayed score, row)
    for label in np.unique(all_labels):
        rows = np.flatnonzero(all_labels == label)
        left = all_scores[rows].astype(np.float64)
        while len(rows):
            best = int(np.argmax(left))
            kept.append((float(left[best]), int(rows[best])))
            rest = np.arange(len(rows)) != best
            overlap = temporal_iou(tuple(all_segments[rows[best]]), all_segments[rows[rest]])
            rows, left = rows[rest], left[rest] * np.exp(-overlap**2 / sigma)
            rows, left = rows[left >= min_score], left[left >= min_score]
    kept = sorted(kept, key=lambda k: -k[0])[:max_segments]  # stable: equal scores keep their order
    index = torch.tensor([row for _, row in kept], dtype=torch.long)
    return segments[index], torch.tensor([score for score, _ in kept], dtype=scores.dtype), labels[index]


@dataclass(frozen=True)
class LocalizationConfig:
    feature_dim: int
    num_classes: int
    dim: int = 128
    levels: int = 4  # strides 1, 2, 4, ... 2**(levels - 1)
    heads: int = 4
    head_layers: int = 2  # convolutions of each prediction head before its output
    center_sample: float = 1.5  # a segment is learnt at positions within this many strides of its centre
    prior: float = 0.01  # the classifier's starting probability (focal loss's bias init)
    dropout: float = 0.0

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(2**level for level in range(self.levels))

    def regression_range(self, level: int) -> tuple[float, float]:
        """Segment lengths (in input positions) the level learns: ActionFormer's [0, 4), [4, 8), ...; the
        last level takes every longer one."""
        low = 0.0 if level == 0 else 4.0 * 2 ** (level - 1)
        return low, math.inf if level == self.levels - 1 else 4.0 * 2**level


class MaskedConv(nn.Module):
    """Conv1d (kernel 3) + LayerNorm + ReLU, zero at padded positions."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim_in, dim_out, 3, padding=1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, C, T), mask (B, T) True where valid
        x = self.conv(x * mask[:, None])
        return F.relu(self.norm(x.transpose(1, 2)).transpose(1, 2)) * mask[:, None]


class LevelBlock(nn.Module):
    """One pyramid level: self-attention over the valid positions, then a feed-forward block."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, T, C)
        h = self.norm_attn(x)
        x = x + self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
        return (x + self.mlp(self.norm_mlp(x))) * mask[..., None]


class LocalizationHead(nn.Module):
    def __init__(self, config: LocalizationConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.ModuleList([MaskedConv(config.feature_dim, config.dim), MaskedConv(config.dim, config.dim)])
        self.levels = nn.ModuleList(LevelBlock(config.dim, config.heads, config.dropout) for _ in config.strides)
        self.cls_convs = nn.ModuleList(MaskedConv(config.dim, config.dim) for _ in range(config.head_layers))
        self.reg_convs = nn.ModuleList(MaskedConv(config.dim, config.dim) for _ in range(config.head_layers))
        self.cls_out = nn.Conv1d(config.dim, config.num_classes, 3, padding=1)
        self.reg_out = nn.Conv1d(config.dim, 2, 3, padding=1)
        self.reg_scale = nn.Parameter(torch.ones(config.levels))  # per level, as ActionFormer's Scale
        nn.init.constant_(self.cls_out.bias, -math.log((1 - config.prior) / config.prior))

    def forward(self, features: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``features`` (B, C, T) and ``mask`` (B, T), T a multiple of the largest stride. Per level:
        class logits (B, T_l, num_classes), distances to start and end in input positions (B, T_l, 2),
        and the level's mask (B, T_l)."""
        x = features
        for conv in self.embed:
            x = conv(x, mask)
        logits, distances, masks = [], [], []
        for level, (stride, block) in enumerate(zip(self.config.strides, self.levels)):
            if level:  # half as long: max over pairs of positions
                x, mask = F.max_pool1d(x, 2), F.max_pool1d(mask[:, None].float(), 2)[:, 0].bool()
            x = block(x.transpose(1, 2), mask).transpose(1, 2)
            cls, reg = x, x
            for conv_c, conv_r in zip(self.cls_convs, self.reg_convs):
                cls, reg = conv_c(cls, mask), conv_r(reg, mask)
            logits.append(self.cls_out(cls).transpose(1, 2))
            distances.append(F.relu(self.reg_scale[level] * self.reg_out(reg)).transpose(1, 2) * stride)
            masks.append(mask)
        return logits, distances, masks

    def positions(self, length: int, device: torch.device) -> list[Tensor]:
        """Each level's positions in input units: the centre of the input positions it pools."""
        return [torch.arange(0, length, stride, device=device, dtype=torch.float32) + 0.5 * (stride - 1)
                for stride in self.config.strides]


def assign_targets(head: LocalizationHead, length: int, segments: Tensor, labels: Tensor,
                   count: int) -> tuple[Tensor, Tensor]:
    """One video's targets over every level's positions, concatenated: the one-hot class (P, C) and
    the segment (P, 2) each position learns (a position inside several candidates learns the
    shortest). ``segments`` (N, 2) in input positions, the first ``count`` real."""
    config = head.config
    segments, labels = segments[:count], labels[:count].long()
    classes, targets = [], []
    for level, (points, stride) in enumerate(zip(head.positions(length, segments.device), config.strides)):
        low, high = config.regression_range(level)
        start, end = segments[None, :, 0], segments[None, :, 1]  # (1, N)
        centre, radius = (start + end) / 2, config.center_sample * stride
        near_centre = (points[:, None] >= torch.maximum(start, centre - radius)) & (
            points[:, None] <= torch.minimum(end, centre + radius))
        reach = torch.maximum(points[:, None] - start, end - points[:, None])
        fits = (reach >= low) & (reach < high)
        lengths = (end - start).expand(len(points), -1).masked_fill(~(near_centre & fits), math.inf)
        best, which = lengths.min(dim=1) if count else (torch.full((len(points),), math.inf), None)
        positive = torch.isfinite(best)
        one_hot = torch.zeros(len(points), config.num_classes, device=segments.device)
        target = torch.zeros(len(points), 2, device=segments.device)
        if count:
            one_hot[positive] = F.one_hot(labels[which[positive]], config.num_classes).float()
            target[positive] = segments[which[positive]]
        classes.append(one_hot)
        targets.append(target)
    return torch.cat(classes), torch.cat(targets)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed over every element (Lin et al.)."""
    probability = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probability * targets + (1 - probability) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).sum()


def diou_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """1 − DIoU of 1-D segments (N, 2), summed: IoU minus the squared distance of the centres over the
    squared length of the smallest segment holding both."""
    inter = (torch.minimum(predicted[:, 1], target[:, 1]) - torch.maximum(predicted[:, 0], target[:, 0])).clamp(min=0)
    union = (predicted[:, 1] - predicted[:, 0]) + (target[:, 1] - target[:, 0]) - inter
    iou = inter / union.clamp(min=1e-8)
    hull = torch.maximum(predicted[:, 1], target[:, 1]) - torch.minimum(predicted[:, 0], target[:, 0])
    centres = (predicted.sum(dim=1) - target.sum(dim=1)) / 2
    return (1 - iou + centres**2 / hull.clamp(min=1e-8) ** 2).sum()


Predictions = tuple[list[Tensor], list[Tensor], list[Tensor]]  # what LocalizationHead.forward returns


def localization_loss(head: LocalizationHead, predictions: Predictions, length: int, segments: Tensor,
                      labels: Tensor, counts: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The focal and DIoU losses of a batch's ``predictions`` (the head's output on inputs of
    ``length`` positions), each over its positives (at least one)."""
    logits, distances, masks = predictions
    points = torch.cat(head.positions(length, logits[0].device))  # (P,)
    logits, distances, valid = torch.cat(logits, 1), torch.cat(distances, 1), torch.cat(masks, 1)  # (B, P, ·)
    cls_loss, reg_loss, positives = logits.new_zeros(()), logits.new_zeros(()), 0
    for b in range(len(logits)):
        classes, target = assign_targets(head, length, segments[b], labels[b], int(counts[b]))
        cls_loss = cls_loss + sigmoid_focal_loss(logits[b][valid[b]], classes[valid[b]])
        positive = valid[b] & (classes.sum(dim=1) > 0)
        predicted = torch.stack([points[positive] - distances[b][positive, 0],
                                 points[positive] + distances[b][positive, 1]], dim=1)
        reg_loss = reg_loss + diou_loss(predicted, target[positive])
        positives += int(positive.sum())
    normaliser = max(positives, 1)
    return (cls_loss + reg_loss) / normaliser, {"cls_loss": cls_loss.detach() / normaliser,
                                               "reg_loss": reg_loss.detach() / normaliser}


@torch.no_grad()
def detect(head: LocalizationHead, predictions: Predictions, mask: Tensor, *, pre_nms_topk: int = 2000,
           min_score: float = 0.001, sigma: float = 0.5, max_segments: int = 100
           ) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Each video's detections from the head's ``predictions`` on inputs masked by ``mask`` (B, T):
    segments (N, 2) in input positions, clipped to the video's valid length; scores; labels —
    Soft-NMS applied per class."""
    logits, distances, masks = predictions
    points = torch.cat(head.positions(mask.shape[-1], mask.device))
    # In fp32: bf16 scores tie, and ties reorder detections (and with them AP).
    scores, distances = torch.cat(logits, 1).float().sigmoid(), torch.cat(distances, 1).float()
    valid = torch.cat(masks, 1)
    out = []
    for b in range(len(mask)):
        length = float(mask[b].sum())
        flat = (scores[b] * valid[b][:, None]).flatten()  # (P · C)
        top = flat.topk(min(pre_nms_topk, len(flat)))
        keep = top.values > min_score
        rows, labels = top.indices[keep] // scores.shape[-1], top.indices[keep] % scores.shape[-1]
        segments = torch.stack([points[rows] - distances[b][rows, 0], points[rows] + distances[b][rows, 1]], 1)
        segments = segments.clamp(min=0, max=length)
        out.append(soft_nms(segments.cpu(), top.values[keep].cpu(), labels.cpu(), sigma=sigma, min_score=min_score,
                            max_segments=max_segments))
    return out
