"""Decode processes keep freed memory for reuse: allocations up to 32 MB come from the heap, not from
mappings of their own that are faulted in anew each time."""
import ctypes
import ctypes.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, sys
    from internvideo.data.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                         "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
    if sys.argv[1] == "kept":
        assert keep_freed_memory()
    before = libc.mallinfo2().hblks
    block = libc.malloc(4 << 20)
    print(libc.mallinfo2().hblks - before)
""")


def mappings_for_a_4_mb_block(policy: str) -> int:
    """In a fresh process: the mappings (``hblks``) a 4 MB allocation adds."""
    out = subprocess.run([sys.executable, "-c", PROBE, policy], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    return int(out.stdout)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"),
                    reason="mallinfo2 is glibc's (2.33 and later)")
def test_a_4_mb_block_is_a_mapping_by_default_and_comes_from_the_heap_once_freed_memory_is_kept():
    assert mappings_for_a_4_mb_block("default") == 1
    assert mappings_for_a_4_mb_block("kept") == 0
