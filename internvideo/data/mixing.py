"""Mixup, CutMix and label smoothing for video classification, one sample at a time.

timm mixes a batch with its own reversal, so which clips meet depends on how the global batch is
cut into micro-batches and ranks. Here a sample's partner, whether it is mixed, how (Mixup or
CutMix) and its λ are drawn from the sample's own generator ``(seed, epoch, sample)``: the same at
any world size, any accumulation, after any restart. The decode worker builds the mixed clip (uint8;
Mixup rounds the blend to the nearest level) and its soft target; the trainer only reads them.
CutMix cuts the same box through every frame, and λ becomes the box's exact share of the frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MixSpec", "soft_target", "draw_mix", "apply_mix"]


@dataclass(frozen=True)
class MixSpec:
    """VideoMAE's fine-tuning defaults: Mixup α 0.8, CutMix α 1.0, always one of them (switch 0.5)."""

    mixup_alpha: float = 0.8  # 0: no Mixup
    cutmix_alpha: float = 1.0  # 0: no CutMix
    prob: float = 1.0  # chance that a sample is mixed at all
    switch_prob: float = 0.5  # chance of CutMix rather than Mixup when both are on

    def __post_init__(self) -> None:
        if min(self.mixup_alpha, self.cutmix_alpha) < 0 or not 0 <= self.prob <= 1 or not 0 <= self.switch_prob <= 1:
            raise ValueError(f"alphas must be >= 0 and probabilities in [0, 1]: {self}")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass(frozen=True)
class Mix:
    """One sample's draw: its partner, λ (the sample's own share) and, for CutMix, the box
    (top, left, height, width) in relative units of the frame."""

    partner: int
    lam: float
    box: tuple[float, float, float, float] | None = None


def draw_mix(spec: MixSpec, rng: np.random.Generator, num_samples: int, sample_id: int) -> Mix | None:
    """Whether and how sample ``sample_id`` is mixed, or None. The partner is another sample of the
    dataset (never itself when there is another)."""
    if not spec.active or rng.random() >= spec.prob:
        return None
    partner = sample_id
    if num_samples > 1:
        partner = int(rng.integers(num_samples - 1))
        partner += partner >= sample_id  # every other sample alike, never the sample itself
    cutmix = spec.cutmix_alpha > 0 and (spec.mixup_alpha == 0 or rng.random() < spec.switch_prob)
    lam = float(rng.beta(spec.cutmix_alpha, spec.cutmix_alpha) if cutmix else rng.beta(spec.mixup_alpha,
                                                                                       spec.mixup_alpha))
    if not cutmix:
        return Mix(partner, lam)
    side = math.sqrt(1.0 - lam)  # the box covers 1 - λ of the frame, clipped at the borders below
    cy, cx = rng.random(), rng.random()
    return Mix(partner, lam, (cy - side / 2, cx - side / 2, side, side))


def apply_mix(video: np.ndarray, other: np.ndarray, mix: Mix) -> tuple[np.ndarray, float]:
    """``video`` (T, H, W, 3) uint8 mixed with ``other`` of the same shape; returns it and the exact
    λ (CutMix: the share of pixels left to ``video`` once the box is clipped to the frame)."""
    if video.shape != other.shape:
        raise ValueError(f"cannot mix clips of shapes {video.shape} and {other.shape}")
    if mix.box is None:
        blend = mix.lam * video.astype(np.float32) + (1.0 - mix.lam) * other.astype(np.float32)
        return np.rint(blend).astype(np.uint8), mix.lam
    _, height, width, _ = video.shape
    top, left, box_h, box_w = mix.box
    y0, y1 = (int(round(np.clip(v, 0.0, 1.0) * height)) for v in (top, top + box_h))
    x0, x1 = (int(round(np.clip(v, 0.0, 1.0) * width)) for v in (left, left + box_w))
    mixed = video.copy()
    mixed[:, y0:y1, x0:x1] = other[:, y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def soft_target(label: int, num_classes: int, smoothing: float, other: int | None = None,
                lam: float = 1.0) -> np.ndarray:
    """The target distribution (num_classes,) float32: λ on ``label`` and 1 − λ on ``other``, each
    one-hot smoothed (1 − ε on the class, ε spread over all classes)."""
    if not 0 <= label < num_classes or (other is not None and not 0 <= other < num_classes):
        raise ValueError(f"labels {label}, {other} outside [0, {num_classes})")
    target = np.full(num_classes, smoothing / num_classes, dtype=np.float64)
    target[label] += (1.0 - smoothing) * lam
    if other is not None:
        target[other] += (1.0 - smoothing) * (1.0 - lam)
    return target.astype(np.float32)
