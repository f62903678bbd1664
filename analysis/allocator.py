"""Large arrays given back to the system as soon as they are freed (glibc's ``malloc``).

glibc serves blocks above its mmap threshold with their own mappings, returned on ``free``,
but it raises that threshold to the size of any such block freed (up to 32 MB), after which
arrays of that size come from the heap: freed, they stay in the process, and a large
capture's analysis, which makes and drops many arrays of a few MB stage after stage, kept
hundreds of MB it no longer used (about 200 MB at ten times the benchmark capture). Fixing the
threshold keeps every large array in its own mapping. Other C libraries: nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold for this process; ``False`` where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
