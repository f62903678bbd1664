"""What a stage freed goes back to the system before the next stage runs (glibc's ``malloc``).

glibc keeps freed memory in its heap for reuse; a large capture's analysis makes and drops
many arrays of a few MB stage after stage, and without a trim the process kept tens to
hundreds of MB it no longer used into the later stages. ``malloc_trim(0)`` after each stage
returns the heap's free pages. (Fixing the mmap threshold instead, so that every large array
is its own mapping, saved a little more at x10 but cost 1.5-2 s of system time in page
faults.) Other C libraries: nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any, Optional

_trim: Optional[Any] = None
_looked_up = False


def _malloc_trim() -> Optional[Any]:
    global _trim, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform.startswith("linux"):
            try:
                _trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            except (OSError, AttributeError):  # musl and others: no malloc_trim
                _trim = None
    return _trim


def give_back_free_memory() -> bool:
    """Return the heap's free pages to the system; ``False`` where there is no glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
