"""``--since`` / ``--until``: analyse the records of one time window of a capture.

A day-long or cluster-wide capture can be larger than the analysis can hold; a window of it
holds only what started inside it. A record belongs to the window when its start time lies in
``[since, until)``. Link records (external id -> internal id) are read whatever their time, so
a request that arrived before the window is still named by the id its client knows. Requests
cut by the window's edges are kept and marked partial, as those cut by the capture's own start
and end are.

Times are what the outputs show: UTC, as an ISO 8601 date and time (``2026-12-07 14:00``,
``2026-12-07T14:00:00.250+08:00``; without an offset it is UTC) or as seconds since the epoch;
or relative to the capture: ``start+10m`` (after its first record's start), ``end-1h`` (before
the end: just after its last record's start), with ``s``, ``m``, ``h`` or ``d`` (seconds when
there is no unit). A relative time is measured on the capture's SQLite files.
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timezone
from typing import Callable, NamedTuple, Optional, Union

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


class Relative(NamedTuple):
    """A time relative to the capture: its ``start`` (first record) or ``end``, plus µs."""

    anchor: str
    offset_us: float


_RELATIVE = re.compile(r"(start|end)\s*(?:([+-])\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?))?",
                       re.IGNORECASE)
_UNIT_US = {"": 1e6, "s": 1e6, "m": 60e6, "h": 3600e6, "d": 86400e6}
Time = Union[float, Relative]


def parse_time(text: str) -> Time:
    """µs since the epoch of ``text`` (ISO 8601, UTC unless it names an offset, or epoch
    seconds), or a :class:`Relative` (``start+10m``, ``end-1h``); ``argparse.ArgumentTypeError``
    naming what is accepted when it is none of them."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        anchor, sign, amount, unit = relative.groups()
        offset = float(amount or 0) * _UNIT_US[(unit or "").lower()]
        return Relative(anchor.lower(), -offset if sign == "-" else offset)
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
            " offset, e.g. 2026-12-07T14:00:00), seconds since the epoch, or a time relative"
            " to the capture (start+10m, end-1h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp() * 1e6


def window_of(since: Optional[Time], until: Optional[Time],
              span: Callable[[], Optional[tuple]] = lambda: None) -> Optional[TimeWindow]:
    """The window of the two options (either may be None); None when neither is given.
    ``span()`` gives the capture's (first, last) record start in µs, asked for only when a
    time is relative. ``ValueError`` when the window is empty or cannot be placed."""
    if since is None and until is None:
        return None
    if isinstance(since, Relative) or isinstance(until, Relative):
        known = span()
        if known is None:
            raise ValueError("a time relative to the capture (start+..., end-...) needs its"
                             " ms_service_*.db files to measure from; none holds a record")
        # "end" is just after the last record's start, so that it is inside [since, end)
        anchors = {"start": known[0], "end": known[1] + 1}
        since, until = (anchors[t.anchor] + t.offset_us if isinstance(t, Relative) else t
                        for t in (since, until))
    window = TimeWindow(-INFINITE if since is None else since,
                        INFINITE if until is None else until)
    if window.since_us >= window.until_us:
        raise ValueError(f"--since must be before --until (window {window.describe()})")
    return window
