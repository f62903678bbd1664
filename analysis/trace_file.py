"""The trace's events in memory and the ``chrome_tracing.json`` file they are written to.

Flow events are most of a trace, so they are kept as numpy columns (:class:`_FlowColumns`)
and printed straight to JSON text; the records' own events (:class:`DeferredEvents`) are made
again each time the trace is read; every other event is a plain dict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from otel_vllm_ascend.analysis.narrow_ints import fits

FLOW_CATEGORY = "request"
FLOW_NAME = "request"
WRITE_CHUNK_EVENTS = 10_000
DEFERRED_CHUNK_ROWS = 5_000
Column = Union[np.ndarray, Callable[[], np.ndarray]]


class TraceEvents(Sequence):
    """The trace events, read like a list of dicts, plus the time origin their ``ts`` count from.

    Flow events are most of a trace (one per request per engine step), so they are kept as
    compact columns and turned into dicts (or straight into JSON text by
    :func:`write_chrome_trace`) only when read.
    """

    def __init__(self, origin_us: float = 0.0) -> None:
        self.origin_us = origin_us
        self.deferred: list[DeferredEvents] = []  # read before ``events``
        self.events: list[dict] = []
        self.flows = _FlowColumns()

    def plain(self) -> Iterator[dict]:
        """Every event but the flows, in order."""
        for part in self.deferred:
            yield from part
        yield from self.events

    def _plain_len(self) -> int:
        return sum(len(part) for part in self.deferred) + len(self.events)

    def __len__(self) -> int:
        return self._plain_len() + len(self.flows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(islice(self, *index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("trace event index out of range")
        plain = self._plain_len()
        if index < plain:
            return next(islice(self.plain(), index, None))
        return self.flows.event(index - plain)

    def __iter__(self) -> Iterator[dict]:
        yield from self.plain()
        yield from self.flows


class DeferredEvents:
    """Events made each time they are read, a chunk of records at a time, instead of held.

    The records' slices and counters are two thirds of a trace's dicts (300,000 at ten times
    the benchmark capture, about 150 MB): made from the records frame, which lives to the end
    anyway, they are written to the JSON file and to ``profiler.db`` as they come.
    ``make(rows, state)`` returns the events of the records in the slice ``rows``; ``state`` is
    a dict carried from one chunk to the next within one reading.
    """

    def __init__(self, rows: int, make: Callable[[slice, dict], list]) -> None:
        self._rows = rows
        self._make = make
        self._count: Optional[int] = None

    def __iter__(self) -> Iterator[dict]:
        state: dict = {}
        for first in range(0, self._rows, DEFERRED_CHUNK_ROWS):
            yield from self._make(slice(first, first + DEFERRED_CHUNK_ROWS), state)

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self)
        return self._count


class _FlowColumns:
    """Flow events (``s``/``t``/``f``) as numpy columns: about 21 bytes each instead of ~450.

    Flow ids, trace pids and thread ids are int32 while every value fits (they are read as
    Python ints, so the type never shows), int64 from the first one that does not.
    """

    _PHASES = "stf"
    _NARROW = frozenset({"flow_id", "pid", "tid"})

    def __init__(self) -> None:
        self.phase = np.zeros(0, dtype="int8")
        self.flow_id = self.pid = self.tid = np.zeros(0, dtype="int32")
        self.ts_ns = np.zeros(0, dtype="int64")

    def __len__(self) -> int:
        return len(self.phase)

    def extend(self, phase: Column, flow_id: Column, pid: Column, tid: Column,
               ts_ns: Column) -> None:
        """Append rows; a column may be given as a function making it, called when that
        column is appended, so that one large input is held at a time."""
        for name, values in (("phase", phase), ("flow_id", flow_id), ("pid", pid),
                             ("tid", tid), ("ts_ns", ts_ns)):
            held = getattr(self, name)
            made = values() if callable(values) else values
            dtype = held.dtype
            if name in self._NARROW and dtype == np.int32 and not fits(made, np.int32):
                dtype = np.dtype("int64")
            setattr(self, name, np.concatenate((held.astype(dtype, copy=False),
                                                np.asarray(made, dtype=dtype))))
            del made

    def _rows(self, first: int, stop: int) -> Iterator[tuple]:
        return zip(self.phase[first:stop].tolist(), self.flow_id[first:stop].tolist(),
                   self.pid[first:stop].tolist(), self.tid[first:stop].tolist(),
                   self.ts_ns[first:stop].tolist())

    def event(self, i: int) -> dict:
        ph, fid, pid, tid, ts = next(self._rows(i, i + 1))
        return _flow(self._PHASES[ph], fid, pid, tid, ts)

    def __iter__(self) -> Iterator[dict]:
        phases = self._PHASES
        for first in range(0, len(self), WRITE_CHUNK_EVENTS):
            for ph, fid, pid, tid, ts in self._rows(first, first + WRITE_CHUNK_EVENTS):
                yield _flow(phases[ph], fid, pid, tid, ts)

    def json_lines(self, first: int, stop: int) -> str:
        """Events ``first``..``stop`` as JSON text, one per line; ``ts`` printed from whole ns
        as ``<µs>.<3 digits>`` (exact, and faster than printing floats)."""
        head = '{"ph":"%s","name":"' + FLOW_NAME + '","cat":"' + FLOW_CATEGORY + '",'
        tail = '"id":%d,"pid":%d,"tid":%d,"ts":%d.%03d'
        templates = [head.replace("%s", phase) + tail + (',"bp":"e"}' if phase == "f" else "}")
                     for phase in self._PHASES]
        micros, nanos = np.divmod(self.ts_ns[first:stop], 1000)
        return ",\n".join([
            templates[ph] % row for ph, row in zip(
                self.phase[first:stop].tolist(),
                zip(self.flow_id[first:stop].tolist(), self.pid[first:stop].tolist(),
                    self.tid[first:stop].tolist(), micros.tolist(), nanos.tolist()))])


def write_chrome_trace(path: Union[str, Path], events: Iterable[dict],
                       origin_us: Optional[float] = None) -> Path:
    """Write ``events`` as a Chrome trace object; returns the path written.

    Written in chunks so the whole JSON text never sits in memory at once.
    """
    path = Path(path)
    if origin_us is None:
        origin_us = getattr(events, "origin_us", 0.0)
    other = {"time_origin_unix_us": origin_us,
             "time_origin_utc": datetime.fromtimestamp(origin_us / 1e6, tz=timezone.utc)
             .isoformat(),
             "generator": "otel-vllm-analyze"}
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    if isinstance(events, TraceEvents):
        plain, flows = events.plain(), events.flows
    else:
        plain, flows = iter(events), _FlowColumns()
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"displayTimeUnit":"ms","otherData":')
        out.write(encode(other))
        out.write(',"traceEvents":[\n')
        separator = ""
        while chunk := list(islice(plain, WRITE_CHUNK_EVENTS)):
            text = encode(chunk)  # "[...]": one C-level call
            out.write(separator)
            out.write(text[1:-1])
            separator = ",\n"
        for first in range(0, len(flows), WRITE_CHUNK_EVENTS):
            out.write(separator)
            out.write(flows.json_lines(first, first + WRITE_CHUNK_EVENTS))
            separator = ",\n"
        out.write("\n]}\n")
    return path


def _ts(ns: int) -> float:
    return ns / 1000.0


def _flow(phase: str, flow_id: int, pid: int, tid: int, ts_ns: int) -> dict:
    event = {"ph": phase, "name": FLOW_NAME, "cat": FLOW_CATEGORY, "id": flow_id, "pid": pid,
             "tid": tid, "ts": _ts(ts_ns)}
    if phase == "f":
        event["bp"] = "e"  # bind to the enclosing slice (the request), not the next one
    return event
