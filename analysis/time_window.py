"""``--since`` / ``--until``: analyse the records of one time window of a capture.

A day-long or cluster-wide capture can be larger than the analysis can hold; a window of it
holds only what started inside it. A record belongs to the window when its start time lies in
``[since, until)``. Link records (external id -> internal id) are read whatever their time, so
a request that arrived before the window is still named by the id its client knows. Requests
cut by the window's edges are kept and marked partial, as those cut by the capture's own start
and end are.

Times are what the outputs show: UTC, as an ISO 8601 date and time (``2026-12-07 14:00``,
``2026-12-07T14:00:00.250+08:00``; without an offset it is UTC) or as seconds since the epoch.
"""

from __future__ import annotations

import argparse
import math
from datetime import datetime, timezone
from typing import NamedTuple, Optional

INFINITE = math.inf


class TimeWindow(NamedTuple):
    """``[since_us, until_us)`` in µs since the epoch; an open end is infinite."""

    since_us: float = -INFINITE
    until_us: float = INFINITE

    def describe(self) -> str:
        return f"{_text(self.since_us, 'the start')} to {_text(self.until_us, 'the end')}"


def _text(us: float, open_end: str) -> str:
    if math.isinf(us):
        return open_end
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(sep=" ")


def outside_note(files: list) -> str:
    """`` (their records start from A to B)`` for the SQLite captures among ``files``, the
    times a window could take; empty when they hold none (OTLP files are not scanned again)."""
    from otel_vllm_ascend.analysis.read_sqlite import time_span

    span = time_span([path for path in files if str(path).endswith(".db")])
    return f" (their records start from {TimeWindow(*span).describe()})" if span else ""


def parse_time(text: str) -> float:
    """µs since the epoch of ``text`` (ISO 8601, UTC unless it names an offset, or epoch
    seconds); ``argparse.ArgumentTypeError`` naming what is accepted when it is neither."""
    value = text.strip()
    try:
        return float(value) * 1e6 if value and math.isfinite(float(value)) else _iso(value)
    except ValueError:
        return _iso(value)


def _iso(value: str) -> float:
    try:
        # Python before 3.11 does not read a trailing "Z"
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time: give an ISO 8601 date and time (UTC unless it names an"
            " offset, e.g. 2026-12-07T14:00:00) or seconds since the epoch") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp() * 1e6


def window_of(since: Optional[float], until: Optional[float]) -> Optional[TimeWindow]:
    """The window of the two options (µs, either may be None); None when neither is given.
    ``ValueError`` when the window is empty."""
    if since is None and until is None:
        return None
    window = TimeWindow(-INFINITE if since is None else since,
                        INFINITE if until is None else until)
    if window.since_us >= window.until_us:
        raise ValueError(f"--since must be before --until (window {window.describe()})")
    return window
