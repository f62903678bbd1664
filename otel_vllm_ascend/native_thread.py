"""The OS thread id of the calling thread, read once per thread.

``threading.get_native_id()`` is a system call (``gettid``) at every call, about 0.2 µs here and
more on a loaded VM, and handlers take it for nearly every record. ``current.id`` reads it from
a ``threading.local`` (an attribute read in C) after the thread's first call. A forked child
gets fresh storage: its threads have ids of their own.

Read it as ``native_thread.current.id`` (through the module: the storage is replaced at fork).
Hooks that take a timestamp too call :data:`stamp`: ``(time.time_ns(), id)`` in one C call
where the compiled part is built (``_hotpath.c``, which forgets the id at fork likewise).
"""

from __future__ import annotations

import os
import threading
import time

from otel_vllm_ascend import hotpath


class _Ids(threading.local):
    def __init__(self) -> None:  # runs once in every thread that reads it
        self.id = threading.get_native_id()


current = _Ids()


def _after_fork_in_child() -> None:
    global current
    current = _Ids()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _stamp() -> tuple:
    """``(time.time_ns(), current.id)``: the compiled ``stamp``'s twin."""
    return time.time_ns(), current.id


stamp = getattr(hotpath.compiled(), "stamp", _stamp)
