"""Spatial transforms on uint8 clips and the trainer-side normalisation.

Decode workers crop and resize clips as uint8 (T, H, W, 3) so that clips travel
to the trainer at a quarter of the float32 size; :func:`normalize_clips` turns a
batch into the model's float input on the trainer (GPU or CPU).

All randomness comes from an explicit ``np.random.Generator`` so a sample is a
pure function of its seed, in any process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "multi_scale_crop_params",
    "multi_scale_crop",
    "center_crop_resize",
    "resize_clip",
    "normalize_clips",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


def _check_clip(clip: np.ndarray) -> None:
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected a uint8 clip (T, H, W, 3), got {clip.dtype} {clip.shape}")


def resize_clip(clip: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (T, H, W, 3) uint8 -> (T, height, width, 3) uint8.

    ``align_corners=False`` and no antialiasing, rounded to the nearest integer.
    """
    _check_clip(clip)
    if clip.shape[1] == height and clip.shape[2] == width:
        return np.ascontiguousarray(clip)
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    # Bilinear weights are convex, so values stay in [0, 255]; clamp guards rounding.
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # (T, height, width, 3)


def _fix_offsets(
    image_w: int, image_h: int, crop_w: int, crop_h: int, more_fix_crop: bool
) -> list[tuple[int, int]]:
    # Corner and centre grid of VideoMAE's GroupMultiScaleCrop.fill_fix_offset,
    # in the same order so a given draw lands on the same position.
    w_step = (image_w - crop_w) // 4
    h_step = (image_h - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more_fix_crop:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * w_step, j * h_step) for i, j in grid]


def multi_scale_crop_params(
    image_h: int,
    image_w: int,
    input_size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_distort: int = 1,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> tuple[int, int, int, int]:
    """Draw a GroupMultiScaleCrop box: returns ``(top, left, crop_h, crop_w)``.

    Crop sides are ``int(short_side * s)`` for ``s`` in ``scales``, snapped to
    ``input_size`` when within 3 pixels of it; (w, h) pairs whose scale indices
    differ by at most ``max_distort`` are candidates, one drawn uniformly. The
    offset is drawn from the 5 (or, with ``more_fix_crop``, 13) fixed grid
    positions when ``fix_crop``, else uniformly. Two draws from ``rng``: the pair,
    then the offset.
    """
    base = min(image_h, image_w)
    sizes = [max(1, int(base * s)) for s in scales]
    # Snapping may round up past a short side smaller than input_size + 3;
    # VideoMAE would then crop outside the image (PIL pads), we clamp instead.
    snapped = [input_size if abs(x - input_size) < 3 else x for x in sizes]
    crop_hs = [min(x, image_h) for x in snapped]
    crop_ws = [min(x, image_w) for x in snapped]
    pairs = [
        (w, h)
        for i, h in enumerate(crop_hs)
        for j, w in enumerate(crop_ws)
        if abs(i - j) <= max_distort
    ]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    if fix_crop:
        offsets = _fix_offsets(image_w, image_h, crop_w, crop_h, more_fix_crop)
        left, top = offsets[int(rng.integers(len(offsets)))]
    else:
        left = int(rng.integers(0, image_w - crop_w + 1))
        top = int(rng.integers(0, image_h - crop_h + 1))
    return top, left, crop_h, crop_w


def multi_scale_crop(
    clip: np.ndarray,
    input_size: int,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_distort: int = 1,
    rng: np.random.Generator | None = None,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> np.ndarray:
    """VideoMAE's pretraining crop: one multi-scale box for all frames, resized.

    Defaults match ``GroupMultiScaleCrop(input_size, [1, .875, .75, .66])`` as
    VideoMAE builds it for pretraining (``fix_crop=True, more_fix_crop=True``).

    Args:
        clip: uint8 (T, H, W, 3).
        rng: the only source of randomness (required).

    Returns:
        uint8 (T, input_size, input_size, 3).
    """
    if rng is None:
        raise ValueError("multi_scale_crop needs an explicit np.random.Generator")
    _check_clip(clip)
    top, left, crop_h, crop_w = multi_scale_crop_params(
        clip.shape[1], clip.shape[2], input_size, rng, scales, max_distort, fix_crop, more_fix_crop
    )
    cropped = clip[:, top : top + crop_h, left : left + crop_w]  # (T, crop_h, crop_w, 3)
    return resize_clip(cropped, input_size, input_size)


def center_crop_resize(clip: np.ndarray, input_size: int) -> np.ndarray:
    """Evaluation view: the central square of side min(H, W), resized to input_size.

    Same field of view as VideoMAE's ``Resize(short_side) + CenterCrop`` when the
    short side is resized to ``input_size``.

    Returns:
        uint8 (T, input_size, input_size, 3).
    """
    _check_clip(clip)
    h, w = clip.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize_clip(clip[:, top : top + side, left : left + side], input_size, input_size)


def normalize_clips(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32, ImageNet-normalised.

    Runs wherever ``batch_uint8`` lives (normally the trainer's GPU).
    """
    if batch_uint8.ndim != 5 or batch_uint8.shape[-1] != 3:
        raise ValueError(f"expected (B, T, H, W, 3), got {tuple(batch_uint8.shape)}")
    if batch_uint8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 clips, got {batch_uint8.dtype}")
    device = batch_uint8.device
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device)
    x = batch_uint8.float().div_(255.0).sub_(mean).div_(std)  # (B, T, H, W, 3)
    return x.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
