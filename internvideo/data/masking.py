"""VideoMAE tube masking."""

from __future__ import annotations

import numpy as np

__all__ = ["num_masked_tokens", "tube_mask"]


def num_masked_tokens(frames: int, height: int, width: int, mask_ratio: float) -> int:
    """How many of the ``frames * height * width`` tokens :func:`tube_mask` masks."""
    return frames * int(mask_ratio * height * width)


def tube_mask(
    frames: int, height: int, width: int, mask_ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """VideoMAE's TubeMaskingGenerator: one spatial mask repeated over time.

    Args:
        frames, height, width: token grid, i.e. T / tubelet, H / patch, W / patch.
        mask_ratio: fraction of each frame's tokens masked; the count per frame
            is ``int(mask_ratio * height * width)`` (truncated, as VideoMAE).
        rng: the only source of randomness (one permutation drawn).

    Returns:
        bool (frames * height * width,), t-major (index = t*H*W + h*W + w),
        True = masked (hidden from the encoder, reconstructed by the decoder).
    """
    if min(frames, height, width) < 1:
        raise ValueError(f"token grid must be positive, got {(frames, height, width)}")
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    per_frame = height * width
    num_masked = int(mask_ratio * per_frame)
    spatial = np.zeros(per_frame, dtype=bool)  # (H*W,)
    spatial[rng.permutation(per_frame)[:num_masked]] = True
    # Same positions in every temporal slice: the "tube" that stops the model
    # copying a patch from its neighbour in time.
    return np.tile(spatial, frames)  # (T*H*W,)
