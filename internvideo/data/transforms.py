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
    "CLIP_MEAN",
    "CLIP_STD",
    "multi_scale_crop_params",
    "multi_scale_crop",
    "center_crop_resize",
    "random_resized_crop_params",
    "random_resized_crop",
    "maybe_flip",
    "spatial_views",
    "resize_clip",
    "NORMALIZATIONS",
    "normalize_clips",
    "renormalize_clips",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# OpenAI CLIP's preprocessing statistics: CLIP towers must see what they were trained on.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


def _check_clip(clip: np.ndarray) -> None:
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected a uint8 clip (T, H, W, 3), got {clip.dtype} {clip.shape}")


def resize_clip(clip: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (T, H, W, 3) uint8 -> (T, height, width, 3) uint8.

    ``align_corners=False`` and no antialiasing. Resized in uint8, channels last, by torch's
    fixed-point kernel: a tenth of the time of a float round trip (7.7 → 0.8 ms for a 16-frame crop to
    224², one thread), which was most of a clip's cost beside decoding; pixels differ from the
    float result's rounding by at most 1.
    """
    _check_clip(clip)
    if clip.shape[1] == height and clip.shape[2] == width:
        return np.ascontiguousarray(clip)
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)  # (T, 3, H, W), channels last in memory
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
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


def random_resized_crop_params(
    image_h: int,
    image_w: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Inception-style box ``(top, left, crop_h, crop_w)``: area a uniform share in ``scale`` of the
    frame, aspect ratio log-uniform in ``ratio``; after ``attempts`` misses, the largest centred box
    with a ratio in range (the rule torchvision's RandomResizedCrop follows)."""
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"bad scale {scale} or ratio {ratio}")
    area = image_h * image_w
    log_ratio = np.log(ratio)
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        crop_w = int(round(np.sqrt(target * aspect)))
        crop_h = int(round(np.sqrt(target / aspect)))
        if 0 < crop_w <= image_w and 0 < crop_h <= image_h:
            top = int(rng.integers(0, image_h - crop_h + 1))
            left = int(rng.integers(0, image_w - crop_w + 1))
            return top, left, crop_h, crop_w
    aspect = image_w / image_h
    if aspect < ratio[0]:
        crop_w, crop_h = image_w, int(round(image_w / ratio[0]))
    elif aspect > ratio[1]:
        crop_h, crop_w = image_h, int(round(image_h * ratio[1]))
    else:
        crop_h, crop_w = image_h, image_w
    return (image_h - crop_h) // 2, (image_w - crop_w) // 2, crop_h, crop_w


def random_resized_crop(
    clip: np.ndarray,
    input_size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """One random-resized-crop box for all frames, resized to ``input_size`` square (uint8)."""
    _check_clip(clip)
    top, left, crop_h, crop_w = random_resized_crop_params(clip.shape[1], clip.shape[2], rng, scale, ratio)
    return resize_clip(clip[:, top : top + crop_h, left : left + crop_w], input_size, input_size)


def maybe_flip(clip: np.ndarray, rng: np.random.Generator, enabled: bool) -> np.ndarray:
    """Mirror every frame left-right with probability 1/2. ``enabled=False`` draws nothing, so data
    whose classes depend on direction (Something-Something, left vs right) keep their labels and
    their sample stream."""
    if not enabled or rng.random() >= 0.5:
        return clip
    return np.ascontiguousarray(clip[:, :, ::-1])


def spatial_views(clip: np.ndarray, input_size: int, num_crops: int) -> np.ndarray:
    """Test views: the short side resized to ``input_size``, then ``num_crops`` squares spread evenly
    along the long side (3: left/centre/right or top/centre/bottom; 1: centre).

    Returns:
        uint8 (num_crops, T, input_size, input_size, 3).
    """
    _check_clip(clip)
    if num_crops < 1:
        raise ValueError(f"num_crops={num_crops} must be >= 1")
    h, w = clip.shape[1:3]
    scale = input_size / min(h, w)
    new_h, new_w = max(input_size, round(h * scale)), max(input_size, round(w * scale))
    resized = resize_clip(clip, new_h, new_w)
    room_h, room_w = new_h - input_size, new_w - input_size
    if num_crops == 1:
        positions = [(room_h // 2, room_w // 2)]
    else:
        along = np.rint(np.linspace(0, max(room_h, room_w), num_crops)).astype(int).tolist()
        positions = [(p, room_w // 2) if room_h > room_w else (room_h // 2, p) for p in along]
    return np.stack([resized[:, t : t + input_size, x : x + input_size] for t, x in positions])


def normalize_clips(batch_uint8: torch.Tensor, normalization: str = "imagenet") -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32, normalised with ``NORMALIZATIONS[normalization]``.

    Runs wherever ``batch_uint8`` lives (normally the trainer's GPU).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {sorted(NORMALIZATIONS)}")
    if batch_uint8.ndim != 5 or batch_uint8.shape[-1] != 3:
        raise ValueError(f"expected (B, T, H, W, 3), got {tuple(batch_uint8.shape)}")
    if batch_uint8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 clips, got {batch_uint8.dtype}")
    device = batch_uint8.device
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in NORMALIZATIONS[normalization])
    x = batch_uint8.float().div_(255.0).sub_(mean).div_(std)  # (B, T, H, W, 3)
    return x.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)


def renormalize_clips(clips: torch.Tensor, source: str, target: str) -> torch.Tensor:
    """Normalised clips (B, 3, T, H, W) from ``source``'s statistics to ``target``'s (as if
    ``normalize_clips`` had used ``target``)."""
    if source == target:
        return clips
    (mean_in, std_in), (mean_out, std_out) = (
        (torch.tensor(v, dtype=clips.dtype, device=clips.device).view(3, 1, 1, 1) for v in NORMALIZATIONS[name])
        for name in (source, target))
    return (clips * std_in + mean_in - mean_out) / std_out
