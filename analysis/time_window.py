"""``--since`` / ``--until``: analyse the records of one time window of a capture.

A day-long or cluster-wide capture can be larger than the analysis can hold; a window of it
holds only what started inside it. A record belongs to the window when its start time, to the
µs as the outputs print it (rounded), lies in ``[since, until)``. Link records (external id ->
internal id) are read whatever their time, so a request that arrived before the window is
still named by the id its client knows. Requests cut by the window's edges are kept and marked
partial, as those cut by the capture's own start and end are.

Times are what the outputs show: UTC, as an ISO 8601 date and time (``2026-12-07 14:00``,
``2026-12-07T14:00:00.250+08:00``, ``...Z``, ``... UTC``; without an offset it is UTC; digits
below the µs are dropped) or as seconds since the epoch; or relative to the capture:
``start+10m`` (after its first record's start), ``end-1h`` (before the end: just after its last
record's start), with ``s``, ``m``, ``h`` or ``d`` (seconds when there is no unit). A relative
time is measured on the capture's SQLite files.
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Callable, NamedTuple, Optional, Union

INFINITE = math.inf
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
# What a time may be: years 1-9999, as Python's datetime holds them (µs since the epoch).
_FIRST_US = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // _US
_LAST_US = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - _EPOCH) // _US


class TimeWindow(NamedTuple):
    """``[since_us, until_us)``, whole µs since the epoch; an open end is infinite."""

    since_us: Union[int, float] = -INFINITE
    until_us: Union[int, float] = INFINITE

    def describe(self) -> str:
        return f"{text_of(self.since_us, 'the start')} to {text_of(self.until_us, 'the end')}"

    def holds(self, start_us: Union[int, float]) -> bool:
        return self.since_us <= start_us < self.until_us


def text_of(us: Union[int, float], open_end: str = "") -> str:
    """A time as the outputs write it (UTC); an infinite one as ``open_end``, one outside the
    years a date can hold in seconds since the epoch."""
    if math.isinf(us):
        return open_end
    if not _FIRST_US <= us <= _LAST_US:
        return f"{us / 1e6:.6f} s since the epoch"
    return (_EPOCH + timedelta(microseconds=round(us))).isoformat(sep=" ")


def record_us(start_ns: Union[int, float]) -> Union[int, float]:
    """A record's start in whole µs, rounded as the outputs print it, from its ns."""
    if type(start_ns) is int:
        return (start_ns + 500) // 1000
    us = start_ns / 1000
    return math.floor(us + 0.5) if math.isfinite(us) else us  # an infinite one in no window


def outside_note(files: list) -> str:
    """`` (their records start from A to B)`` for the SQLite captures among ``files``, the
    times a window could take; empty when they hold none (OTLP files are not scanned again)."""
    from otel_vllm_ascend.analysis.read_sqlite import time_span

    span = time_span([path for path in files if str(path).endswith(".db")])
    return f" (their records start from {TimeWindow(*span).describe()})" if span else ""


class Relative(NamedTuple):
    """A time relative to the capture: its ``start`` (first record) or ``end``, plus µs."""

    anchor: str
    offset_us: int


_AMOUNT = r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)"  # 90, 1.5h, 10m: a duration
_RELATIVE = re.compile(r"(start|end)\s*(?:([+-])\s*" + _AMOUNT + ")?", re.IGNORECASE)
_DURATION = re.compile(_AMOUNT, re.IGNORECASE)
_UNIT_US = {"": 10**6, "s": 10**6, "m": 60 * 10**6, "h": 3600 * 10**6, "d": 86400 * 10**6}
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
                  r"\s*(z|utc|[+-]\d{2}:?\d{2})?", re.IGNORECASE)
Time = Union[int, Relative]
_NOT_A_TIME = ("is not a time: give an ISO 8601 date and time (UTC unless it names an offset,"
               " e.g. 2026-12-07T14:00:00), seconds since the epoch, or a time relative to the"
               " capture (start+10m, end-1h)")



def _duration_us(amount: str, unit: str) -> int:
    return math.floor(Decimal(amount) * _UNIT_US[unit.lower()])


def parse_duration(text: str) -> int:
    """Whole µs of ``10m``, ``1h``, ``90`` (seconds), at least a second."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give a number of seconds"
                                         " or one with s, m, h or d (90, 10m, 1h)")
    value = _duration_us(*match.groups())
    if value < 10**6:
        raise argparse.ArgumentTypeError(f"{text!r}: a window is at least one second long")
    return value


def parse_time(text: str) -> Time:
    """Whole µs since the epoch of ``text`` (ISO 8601, UTC unless it names an offset, or epoch
    seconds), or a :class:`Relative` (``start+10m``, ``end-1h``); ``argparse.ArgumentTypeError``
    naming what is accepted when it is none of them."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        anchor, sign, amount, unit = relative.groups()
        offset = _duration_us(amount or "0", unit or "")
        return Relative(anchor.lower(), -offset if sign == "-" else offset)
    moment = _iso(value)
    if moment is None:
        try:
            seconds = Decimal(value)
        except InvalidOperation:
            seconds = None
        if seconds is None or not seconds.is_finite():
            raise argparse.ArgumentTypeError(f"{value!r} {_NOT_A_TIME}")
        try:  # far beyond any date: out of range below, not a number of a billion digits
            moment = math.floor(seconds * 10**6) if abs(seconds) < 10**15 else _LAST_US + 1
        except ArithmeticError:  # an exponent beyond what decimal computes with
            moment = _LAST_US + 1
    if not _FIRST_US <= moment <= _LAST_US:
        raise argparse.ArgumentTypeError(f"{value!r} is out of range: a time lies in the years"
                                         " 1 to 9999 (seconds since the epoch, not ms)")
    return moment


def _iso(value: str) -> Optional[int]:
    """µs since the epoch of an ISO 8601 date and time (the same on every Python version);
    None when ``value`` is not one."""
    match = _ISO.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0),
                          int(second or 0), int((fraction or "0")[:6].ljust(6, "0")),
                          tzinfo=timezone.utc)
    except ValueError:  # a month 13, a day 31 of a month of 30
        return None
    if zone and zone.lower() not in ("z", "utc"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        moment -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return (moment - _EPOCH) // _US


def closed(window: Optional[TimeWindow], span: Callable[[], Optional[tuple]],
           align_us: int = 1, option: str = "--every") -> TimeWindow:
    """``window`` with an open end (or none at all) closed at the capture's first record (down
    to a multiple of ``align_us`` since the epoch: hourly windows start on the hour), or just
    after its last; ``ValueError`` when the capture's SQLite files give no span."""
    if window is not None and not math.isinf(window.since_us) \
            and not math.isinf(window.until_us):
        return window
    known = span()
    if known is None:
        raise ValueError(f"{option} needs the capture's ms_service_*.db files to find where it"
                         " starts and ends, or both --since and --until")
    window = window or TimeWindow()
    closed_window = TimeWindow(known[0] - known[0] % align_us if math.isinf(window.since_us)
                               else window.since_us,
                               known[1] + 1 if math.isinf(window.until_us) else window.until_us)
    if closed_window.since_us >= closed_window.until_us:
        raise ValueError(f"no part of the capture lies in the window {window.describe()}")
    return closed_window


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
        anchors = {"start": record_us(known[0] * 1000), "end": record_us(known[1] * 1000) + 1}
        since, until = (anchors[t.anchor] + t.offset_us if isinstance(t, Relative) else t
                        for t in (since, until))
    window = TimeWindow(-INFINITE if since is None else since,
                        INFINITE if until is None else until)
    if window.since_us >= window.until_us:
        raise ValueError(f"--since must be before --until (window {window.describe()})")
    return window
