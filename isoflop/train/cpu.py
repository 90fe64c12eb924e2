"""CPU-specific speedups for training (process-wide, so they help every model in the process alike).

glibc's ``malloc`` serves large blocks (above ``M_MMAP_THRESHOLD``, dynamic up to 32 MiB) with fresh
``mmap`` calls and returns them on ``free``; every training step then page-faults in its activation
and gradient buffers again (the kernel zeroes each 4 KiB page). Raising the mmap and trim thresholds
keeps freed memory in the heap for reuse, which removes those faults. See ``mallopt(3)``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameter numbers from <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_BYTES = 1 << 30  # keep up to 1 GiB of freed heap at the top instead of returning it to the kernel


def tune_allocator(trim_bytes: int = _TRIM_BYTES) -> bool:
    """Serve every block from the heap (``M_MMAP_MAX = 0``; glibc still falls back to mmap if the heap
    cannot grow) and keep freed memory (``M_TRIM_THRESHOLD``). Returns False, changing nothing, off
    glibc/Linux."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_trim = mallopt(M_TRIM_THRESHOLD, min(int(trim_bytes), 2**31 - 1))
    ok_mmap = mallopt(M_MMAP_MAX, 0)
    return bool(ok_trim) and bool(ok_mmap)
