"""The one count of what this process dropped, by where, reported once at exit.

Three places can drop telemetry, never vLLM's work: the recorder's queue (full), the span
processor's queue (``OTEL_BSP_MAX_QUEUE_SIZE`` full) and the file exporter (a write that
failed). Each says so once when it first happens (with its own advice) and adds here; the
total is logged once, as one WARNING, when the process exits. Exporters import this module
(export -> collection), never the other way.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Dict

_logger = logging.getLogger(__name__)

RECORD_QUEUE = "the record queue (OTEL_VLLM_RECORD_QUEUE_SIZE full)"
SPAN_QUEUE = "the span queue (OTEL_BSP_MAX_QUEUE_SIZE full)"
FILE_WRITE = "the capture file (writes failed)"


class _Drops:
    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}
        self.atexit_registered = False
        self.reported: Dict[str, int] = {}


_drops = _Drops()


def add(where: str, count: int = 1) -> int:
    """Count ``count`` dropped records or spans at ``where``; returns the total there so far."""
    counts = _drops.counts
    total = counts.get(where, 0) + count
    counts[where] = total
    if not _drops.atexit_registered:
        _drops.atexit_registered = True
        atexit.register(report)
    return total


def count(where: str) -> int:
    return _drops.counts.get(where, 0)


def total() -> int:
    return sum(_drops.counts.values())


def report() -> None:
    """Log what was dropped since the last report, as one WARNING (exit paths call it)."""
    new = {where: n - _drops.reported.get(where, 0) for where, n in _drops.counts.items()}
    new = {where: n for where, n in new.items() if n}
    if not new:
        return
    _drops.reported = dict(_drops.counts)
    _logger.warning("otel-vllm-ascend: pid %d dropped %d records/spans: %s", os.getpid(),
                    sum(new.values()),
                    "; ".join(f"{n} at {where}" for where, n in sorted(new.items())))


def _after_fork_in_child() -> None:
    _drops.counts = {}
    _drops.reported = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
