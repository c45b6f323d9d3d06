"""The C allocator's policy for processes that decode video.

glibc serves an allocation above its mmap threshold with a mapping of its own, returned to the system
when freed, and gives free memory at the top of a heap back to the system past its trim threshold;
both thresholds start small (128 KB) and move with what was last freed. Decoding allocates and frees
frames, spans and clips of a few MB at a time, of changing sizes, on several threads, so much of that
memory was mapped, faulted in a page at a time, and unmapped again for every clip. Kept in the heap,
it is reused: one decode thread of VideoMAE's clips took a third fewer page faults and decoded 4 clips
a video 12 % faster, 1 clip a video as fast (``benchmarks/decode_per_clip.py``).
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems: larger allocations are still mappings
TRIM_THRESHOLD = 256 << 20  # freed heap kept for reuse, per heap


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MB from the heap and keep up to 256 MB of a heap's freed memory for
    reuse, for the whole process; returns whether the C library took the settings (glibc does; a
    C library without ``mallopt`` keeps its own policy)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
