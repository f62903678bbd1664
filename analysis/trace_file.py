"""The trace's events in memory and the ``chrome_tracing.json`` file they are written to.

Flow events are most of a trace, so they are read a chunk of numpy columns at a time
(:class:`_FlowParts`: the one per request per engine step made from compact inputs each time)
and printed straight to JSON text; the records' own events (:class:`DeferredEvents`) are made
again each time the trace is read (once for the JSON file and profiler.db where
:class:`WrittenAsRead` writes the file as profiler.db reads them); every other event is a plain
dict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Union

import numpy as np

FLOW_CATEGORY = "request"
FLOW_NAME = "request"
WRITE_CHUNK_EVENTS = 10_000
DEFERRED_CHUNK_ROWS = 5_000


class TraceEvents(Sequence):
    """The trace events, read like a list of dicts, plus the time origin their ``ts`` count from.

    Flow events are most of a trace (one per request per engine step), so they are made a
    chunk of columns at a time and turned into dicts (or straight into JSON text by
    :func:`write_chrome_trace`) only when read.
    """

    def __init__(self, origin_us: float = 0.0) -> None:
        self.origin_us = origin_us
        self.deferred: list[DeferredEvents] = []  # read before ``events``
        self.events: list[dict] = []
        self.flows = _FlowParts()

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


class FlowChunk(NamedTuple):
    """Consecutive flow events as integer columns of one length: ``phase`` (0, 1, 2 for
    ``s``, ``t``, ``f``), ``flow_id``, ``pid``, ``tid`` and ``ts_ns``."""

    phase: np.ndarray
    flow_id: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    ts_ns: np.ndarray

    def rows(self) -> Iterator[tuple]:
        """(phase, flow id, pid, tid, ts in ns) per event, as Python ints."""
        return zip(*(column.tolist() for column in self))


# A part's chunk maker: ``make(first, stop)`` gives the part's events ``first``..``stop``.
ChunkMaker = Callable[[int, int], FlowChunk]


class _FlowParts:
    """Flow events (``s``/``t``/``f``), one part after the other, read a chunk at a time.

    A part is either held as columns (a few events per request) or made from compact inputs
    each time it is read (one event per request per engine step: two million at ten times
    the benchmark capture, twenty million at a hundred times; held as columns they were
    most of the trace's memory).
    """

    _PHASES = "stf"

    def __init__(self) -> None:
        self._parts: list[tuple[int, ChunkMaker]] = []

    def __len__(self) -> int:
        return sum(length for length, _ in self._parts)

    def add_held(self, chunk: FlowChunk) -> None:
        """Append events held as columns."""
        self.add_made(len(chunk.phase),
                      lambda first, stop: FlowChunk(*(c[first:stop] for c in chunk)))

    def add_made(self, length: int, make: ChunkMaker) -> None:
        """Append ``length`` events that ``make(first, stop)`` makes when they are read."""
        if length:
            self._parts.append((length, make))

    def chunks(self, size: int) -> Iterator[FlowChunk]:
        """Every event in order, in chunks of at most ``size`` (a part's last one shorter)."""
        for length, make in self._parts:
            for first in range(0, length, size):
                yield make(first, min(first + size, length))

    def event(self, i: int) -> dict:
        for length, make in self._parts:
            if i < length:
                ph, fid, pid, tid, ts = next(make(i, i + 1).rows())
                return _flow(self._PHASES[ph], fid, pid, tid, ts)
            i -= length
        raise IndexError("flow event index out of range")

    def __iter__(self) -> Iterator[dict]:
        phases = self._PHASES
        for chunk in self.chunks(WRITE_CHUNK_EVENTS):
            for ph, fid, pid, tid, ts in chunk.rows():
                yield _flow(phases[ph], fid, pid, tid, ts)


def _flow_json_lines(chunk: FlowChunk) -> str:
    """The events of ``chunk`` as JSON text, one per line; ``ts`` printed from whole ns as
    ``<µs>.<3 digits>`` (exact, and faster than printing floats)."""
    head = '{"ph":"%s","name":"' + FLOW_NAME + '","cat":"' + FLOW_CATEGORY + '",'
    tail = '"id":%d,"pid":%d,"tid":%d,"ts":%d.%03d'
    templates = [head.replace("%s", phase) + tail + (',"bp":"e"}' if phase == "f" else "}")
                 for phase in _FlowParts._PHASES]
    micros, nanos = np.divmod(chunk.ts_ns, 1000)
    return ",\n".join([
        templates[ph] % row for ph, row in zip(
            chunk.phase.tolist(),
            zip(chunk.flow_id.tolist(), chunk.pid.tolist(), chunk.tid.tolist(),
                micros.tolist(), nanos.tolist()))])


def write_chrome_trace(path: Union[str, Path], events: Iterable[dict],
                       origin_us: Optional[float] = None) -> Path:
    """Write ``events`` as a Chrome trace object; returns the path written.

    Written in chunks so the whole JSON text never sits in memory at once.
    """
    if origin_us is None:
        origin_us = getattr(events, "origin_us", 0.0)
    if isinstance(events, TraceEvents):
        plain, flows = events.plain(), events.flows
    else:
        plain, flows = iter(events), _FlowParts()
    with ChromeTraceFile(path, origin_us) as out:
        while chunk := list(islice(plain, WRITE_CHUNK_EVENTS)):
            out.write_events(chunk)
        for flow_chunk in flows.chunks(WRITE_CHUNK_EVENTS):
            out.write_flows(flow_chunk)
    return Path(path)


def json_written(run: Any, path: Union[str, Path], events: TraceEvents,
                 json_file: Optional[WrittenAsRead] = None, failed_from: int = 0
                 ) -> Optional[Path]:
    """``chrome_tracing.json`` at ``path``: as ``json_file`` wrote it while profiler.db read
    the events, else (no such reading, or one not read to the end: profiler.db failed)
    written on its own. Each failure is ``run``'s (output_jobs._Run); one of this file
    listed from ``failed_from`` on means it is not written again."""
    written = run.stage("chrome_tracing.json", json_file.result) if json_file is not None else None
    if written is None and "chrome_tracing.json" not in run.failed[failed_from:]:
        written = run.stage("chrome_tracing.json", write_chrome_trace, path, events)
    return written


class ChromeTraceFile:
    """``chrome_tracing.json`` written a chunk of events at a time: the plain events (dicts),
    then the flows (:class:`FlowChunk`). A context manager: the file is complete when it
    leaves without an exception."""

    def __init__(self, path: Union[str, Path], origin_us: float) -> None:
        self.path = Path(path)
        self._origin_us = origin_us
        self._out: Any = None
        self._separator = ""
        self._encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def __enter__(self) -> ChromeTraceFile:
        other = {"time_origin_unix_us": self._origin_us,
                 "time_origin_utc": datetime.fromtimestamp(self._origin_us / 1e6,
                                                           tz=timezone.utc).isoformat(),
                 "generator": "otel-vllm-analyze"}
        self._out = open(self.path, "w", encoding="utf-8")
        self._out.write('{"displayTimeUnit":"ms","otherData":')
        self._out.write(self._encode(other))
        self._out.write(',"traceEvents":[\n')
        return self

    def write_events(self, chunk: list) -> None:
        text = self._encode(chunk)  # "[...]": one C-level call
        self._out.write(self._separator)
        self._out.write(text[1:-1])
        self._separator = ",\n"

    def write_flows(self, chunk: FlowChunk) -> None:
        self._out.write(self._separator)
        self._out.write(_flow_json_lines(chunk))
        self._separator = ",\n"

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        try:
            if kind is None:
                self._out.write("\n]}\n")
        finally:
            self._out.close()


class WrittenAsRead:
    """A trace's events, read once (as :func:`writers.finish_profiler_db` reads them) and
    written to ``chrome_tracing.json`` as they are read: the records' events and the flows
    are made once for the two outputs, not once each.

    The reader sees the plain events (``plain()``) in the chunks :func:`write_chrome_trace`
    writes, then the flows (``flows.chunks``). :meth:`result` tells how the file came out:
    written whole, or the file's own error (which never stops the reader), or ``None`` when
    the reader did not read everything (the file is then left incomplete).
    """

    def __init__(self, events: TraceEvents, path: Union[str, Path]) -> None:
        self.origin_us = events.origin_us
        self.events = events.events
        self._events = events
        self._file = ChromeTraceFile(path, events.origin_us)
        self._error: Optional[BaseException] = None
        self._open = False
        # What the reader read to the end, in this order (flows: none to read counts as read).
        self._read = {"plain": False, "flows": not len(events.flows)}
        self.flows = _FlowsWrittenAsRead(self)

    def _write(self, method: str, chunk: Any) -> None:
        if self._error is not None:
            return
        try:
            if not self._open:
                self._file.__enter__()
                self._open = True
            getattr(self._file, method)(chunk)
        except Exception as exc:  # the file's failure, reported by result(); reading goes on
            self._error = exc
            try:
                self._close(exc)
            except Exception:  # noqa: BLE001 - the first error is the one reported
                pass

    def _close(self, error: Optional[BaseException]) -> None:
        if self._open:
            self._open = False
            self._file.__exit__(None if error is None else type(error), error, None)

    def plain(self) -> Iterator[dict]:
        plain = self._events.plain()
        while chunk := list(islice(plain, WRITE_CHUNK_EVENTS)):
            self._write("write_events", chunk)
            yield from chunk
        self._read["plain"] = True

    def result(self) -> Optional[Path]:
        """The path written; raises the file's error; ``None`` if not read to the end."""
        if self._error is not None:
            raise self._error
        if not all(self._read.values()):
            self._close(RuntimeError("not read to the end"))
            return None
        if not self._open:  # no event at all: the file is still written
            self._file.__enter__()
            self._open = True
        self._close(None)
        return self._file.path


class _FlowsWrittenAsRead:
    """The flows of a :class:`WrittenAsRead`, each chunk written to the file as it is read."""

    def __init__(self, owner: WrittenAsRead) -> None:
        self._owner = owner

    def __len__(self) -> int:
        return len(self._owner._events.flows)

    def chunks(self, size: int) -> Iterator[FlowChunk]:
        owner = self._owner
        in_order = owner._read["plain"]  # else the file is not written from them: result() None
        for chunk in owner._events.flows.chunks(size):
            if in_order:
                owner._write("write_flows", chunk)
            yield chunk
        if in_order:
            owner._read["flows"] = True


def _ts(ns: int) -> float:
    return ns / 1000.0


def _flow(phase: str, flow_id: int, pid: int, tid: int, ts_ns: int) -> dict:
    event = {"ph": phase, "name": FLOW_NAME, "cat": FLOW_CATEGORY, "id": flow_id, "pid": pid,
             "tid": tid, "ts": _ts(ts_ns)}
    if phase == "f":
        event["bp"] = "e"  # bind to the enclosing slice (the request), not the next one
    return event
