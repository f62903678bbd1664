"""``--stream``'s trace: ``chrome_tracing.json`` and profiler.db's trace tables, a window at a
time.

Each window gives the events of what it owns (stream_tables.py): its records' slices, instants
and counters, and its requests' slices on the Requests lanes with their flows. What depends on
the whole capture is carried from window to window: the time origin (the first window's first
second), the lanes' ends and the flows numbered so far (trace_requests.RequestLanes: requests
come window after window in the order of their arrivals), each process's last KV total (the
KV counters), the domains written on each track (the tracks' names). The events go to files
beside the output as they are made, one JSON line per slice, instant or counter and the flows
as integer columns, so memory stays one window's.

A process's trace pid is known only once every process is: two hosts sharing a pid are given
new ones, and the Requests process takes the next free pid. So the parts name processes by a
code, given as they are met; at the end the codes become trace pids, the processes' and
tracks' names are made, and the parts are read back as one analysis's trace events
(trace_file.TraceEvents), which chrome_tracing.json and profiler.db are written from as one
analysis writes them.

Each request's flow through its steps is written in the order of the requests' first steps,
as one analysis writes them: held until the windows read cannot hold a request that starts
before it. Where the result can differ from one analysis's: a capture whose engine-step record
changes from window to window (as for forward.csv); a request whose first step starts
before the window its arrival lies in (hosts' clocks apart): its flow comes later in the file
(the same events, in another order); a request without its arrival record, whose slice then
starts at its first scheduling, in a later window than its first record: it is laid out with
its first record's window, so its lane and flow number may differ.
"""

from __future__ import annotations

import copy
import heapq
import json
import shutil
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.trace import _to_ns, trace_origin_us
from otel_vllm_ascend.analysis.trace_file import FlowChunk, TraceEvents
from otel_vllm_ascend.analysis.trace_records import (
    _SCHEDULE_RECORD,
    _counter_events,
    _metric_samples,
    _record_events,
    _step_record_name,
)
from otel_vllm_ascend.analysis.trace_requests import (
    RequestLanes,
    _request_lifecycle,
    _RequestInfos,
    _RequestSteps,
    lay_out,
)
from otel_vllm_ascend.analysis.trace_tracks import (
    OVERLAP_TID_STRIDE,
    _TraceProcesses,
    place_on_lanes,
    track_domains,
)

PARTS_FOLDER = ".chrome_tracing.parts"
_PLAIN_PARTS = ("records", "counters", "requests")  # in the order the file lists them
_FLOW_PARTS = ("starts", "steps")  # a request's flow start and finish; its steps
_CHUNK_ROWS = 5_000  # records made into events at a time
_REQUESTS = -1  # the code of the Requests process


class StreamedTrace:
    """The trace's events of the windows so far, in part files under ``out``."""

    def __init__(self, out: Path) -> None:
        self.folder = Path(out) / PARTS_FOLDER
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.origin: Optional[float] = None
        self.keys: list = []  # process code -> (host, pid)
        self._codes: dict = {}  # (host, pid) -> code
        self._first_rows: dict = {}  # code -> (host, pid, role, dp_rank) of its first record
        self.tracks: dict = {}  # (code, tid, track) -> the domains written there
        self.total_blocks: dict = {}  # code -> its last KV total (the KV counters)
        self.lane_stacks: dict = {}  # (code, tid) -> its lanes' open spans (their ends)
        self.lanes = RequestLanes()
        self.unlisted: set = set()  # ids laid out from their steps alone (no request row)
        self.windows = 0  # windows read with records
        # (first step's start ns, window, group, flow events) of each request's flow through
        # its steps, until written (a heap)
        self._steps_waiting: list = []
        self._plain = {name: open(self.folder / f"{name}.jsonl", "w", encoding="utf-8")
                       for name in _PLAIN_PARTS}
        self._flows = {name: open(self.folder / f"{name}.bin", "wb") for name in _FLOW_PARTS}
        self.counts = dict.fromkeys(_PLAIN_PARTS + _FLOW_PARTS, 0)
        self._encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def add(self, frame: pd.DataFrame, owns: Callable[[np.ndarray], np.ndarray],
            requests: Optional[pd.DataFrame], request_ids: set, until_us: float) -> None:
        """The events of a window's reading ``frame`` that are its own: records that start in
        it (``owns(times µs)``), its ``requests`` (request.csv's rows); ``request_ids``: every
        id of the reading's request table; ``until_us``: the window's end."""
        if not frame.empty:
            self._add(frame, owns, requests, request_ids)
            self.windows += 1
        if self.origin is not None:
            self._flush_steps((until_us - self.origin) * 1000.0)

    def _add(self, frame: pd.DataFrame, owns: Callable[[np.ndarray], np.ndarray],
             requests: Optional[pd.DataFrame], request_ids: set) -> None:
        if self.origin is None:  # the first window read holds the capture's first record
            self.origin = trace_origin_us(frame)
        start_us = frame["start_us"].to_numpy(dtype="float64")
        start_ns = _to_ns(start_us, self.origin)
        end_ns = np.maximum(_to_ns(frame["end_us"].to_numpy(dtype="float64"), self.origin),
                            start_ns)
        owned = owns(start_us)
        mine = np.flatnonzero(owned)
        codes = self._process_codes(frame, mine)
        tids = frame["tid"].to_numpy()
        names, domains = frame["name"].array, frame["domain"].array
        slice_tids = self._tracks(codes, tids, start_ns, end_ns, owned)
        samples = _metric_samples(frame, start_ns, end_ns)
        step_name = _step_record_name(names, prefer=_SCHEDULE_RECORD)
        for first in range(0, len(mine), _CHUNK_ROWS):
            rows = mine[first:first + _CHUNK_ROWS]
            part = frame.iloc[rows]
            row_names, row_domains = part["name"].tolist(), part["domain"].tolist()
            row_samples = samples[rows].tolist()
            self._write("records", _record_events(
                part, codes[rows], slice_tids[rows], start_ns[rows], end_ns[rows], row_names,
                row_domains, row_samples))
            self._write("counters", _counter_events(
                part, codes[rows], start_ns[rows], row_names, row_domains, row_samples,
                step_name, self.total_blocks))
        track_domains(slice_tids[mine], codes[mine], tids[mine], domains[mine], self.tracks)
        self._add_requests(frame, requests, request_ids, codes, slice_tids, start_ns, end_ns,
                           names, owns)

    def _tracks(self, codes: np.ndarray, tids: np.ndarray, start_ns: np.ndarray,
                end_ns: np.ndarray, owned: np.ndarray) -> np.ndarray:
        """Each record's track (trace_tracks._slice_tids): the spans from the window's start
        (the ``owned`` records) on are placed on their thread's lanes in order, from the
        lanes' state the windows before left (``self.lane_stacks``, kept as it is at the
        window's end); records before the window keep their tid (the window writes none of
        them)."""
        slice_tids = tids.astype(np.int64)
        if not owned.any():
            return slice_tids
        rows = np.flatnonzero((end_ns > start_ns) & (owned | (start_ns > start_ns[owned].max())))
        if not len(rows):
            return slice_tids
        rows = rows[np.lexsort((-(end_ns[rows] - start_ns[rows]), start_ns[rows], tids[rows],
                                codes[rows]))]
        code, tid, start, end = codes[rows], tids[rows], start_ns[rows], end_ns[rows]
        mine = owned[rows]
        track_starts = np.flatnonzero((code[1:] != code[:-1]) | (tid[1:] != tid[:-1])) + 1
        nests_next = start[1:] < end[:-1]  # within a track: the next span starts inside
        for first, stop in zip([0, *track_starts.tolist()], [*track_starts.tolist(), len(rows)]):
            key = (int(code[first]), int(tid[first]))
            stacks = self.lane_stacks.get(key) or [[]]
            if not nests_next[first:stop - 1].any() and all(
                    not stack or stack[0] <= start[first] for stack in stacks):
                # One after the other, nothing open: all on the thread's own track.
                last_mine = np.flatnonzero(mine[first:stop])
                if len(last_mine):
                    stacks[0] = [int(end[first + last_mine[-1]])]
                    self.lane_stacks[key] = stacks
                continue
            stacks = copy.deepcopy(stacks)
            kept = None  # the lanes at the window's end
            for index in range(first, stop):
                if kept is None and not mine[index]:
                    kept = copy.deepcopy(stacks)
                slice_tids[rows[index]] = int(tid[index]) + place_on_lanes(
                    stacks, int(start[index]), int(end[index])) * OVERLAP_TID_STRIDE
            self.lane_stacks[key] = kept if kept is not None else stacks
        return slice_tids

    def _process_codes(self, frame: pd.DataFrame, mine: np.ndarray) -> np.ndarray:
        """Each record's process code; the first own record of a process not met before is
        kept (its role and data-parallel rank name the process)."""
        pairs, keys = pd.factorize(pd.MultiIndex.from_arrays([frame["host"], frame["pid"]]))
        code_of = np.empty(len(keys), dtype=np.int64)
        for index, key in enumerate(keys.tolist()):
            code = self._codes.get(key)
            if code is None:
                code = self._codes[key] = len(self.keys)
                self.keys.append(key)
            code_of[index] = code
        codes = code_of[pairs]
        own_codes, at = np.unique(codes[mine], return_index=True)
        for code, row in zip(own_codes.tolist(), mine[at].tolist()):
            if code not in self._first_rows:
                host, pid, role, dp_rank = frame[["host", "pid", "role", "dp_rank"]].iloc[row]
                self._first_rows[code] = (host, pid, role, dp_rank)
        return codes

    def _add_requests(self, frame: pd.DataFrame, requests: Optional[pd.DataFrame],
                      request_ids: set, codes: np.ndarray, slice_tids: np.ndarray,
                      start_ns: np.ndarray, end_ns: np.ndarray, names: Any,
                      owns: Callable[[np.ndarray], np.ndarray]) -> None:
        steps = _RequestSteps(frame, codes, slice_tids, start_ns, end_ns, names)
        rids: list = []
        lifecycle = np.zeros((0, 5), dtype=np.int64)
        if requests is not None and not requests.empty:
            rids, lifecycle = _request_lifecycle(frame, requests, start_ns, end_ns, names,
                                                 self.origin)
        timed = len(rids)
        # Ids in the steps that no request row names: laid out by the window their first
        # step starts in.
        for rid, group in steps.groups.items():
            if rid in request_ids or rid in self.unlisted:
                continue
            first_us = self.origin + steps.start(steps.first(group)) / 1000.0
            if owns(np.array([first_us]))[0]:
                self.unlisted.add(rid)
                rids.append(rid)
        if not rids:
            return
        slices, starts, group_flow = lay_out(steps, rids, lifecycle, timed,
                                             _RequestInfos(requests), _REQUESTS, self.lanes)
        events = iter(slices.deferred())
        while batch := list(islice(events, _CHUNK_ROWS)):
            self._write("requests", batch)
        if starts is not None:
            self._write_flows("starts", starts)
        # Each request's flow through its steps waits until no later window can hold a
        # request whose first step comes before it (its arrival is that window's, later).
        make = steps.flow_maker(group_flow)
        for group in np.flatnonzero(group_flow).tolist():  # in the order of their first steps
            first = steps.first(group)
            heapq.heappush(self._steps_waiting, (steps.start(first), self.windows, group,
                                                 make(first, steps.last(group) + 1)))

    def _flush_steps(self, before_ns: float) -> None:
        """The waiting flows through steps whose first step starts before ``before_ns``, in
        the order of their first steps (one analysis's order)."""
        waiting = self._steps_waiting
        while waiting and waiting[0][0] < before_ns:
            self._write_flows("steps", heapq.heappop(waiting)[3])

    def _write(self, part: str, events: list) -> None:
        if events:
            encode = self._encode
            self._plain[part].write("".join([encode(event) + "\n" for event in events]))
            self.counts[part] += len(events)

    def _write_flows(self, part: str, chunk: FlowChunk) -> None:
        np.stack([np.asarray(column, dtype=np.int64) for column in chunk], axis=1).tofile(
            self._flows[part])
        self.counts[part] += len(chunk.phase)

    def close(self) -> None:
        for handle in (*self._plain.values(), *self._flows.values()):
            handle.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def processes_frame(self) -> pd.DataFrame:
        """Each process's first record (host, pid, role, dp_rank): what names the processes
        (trace_tracks._TraceProcesses reads it as it reads the records)."""
        return pd.DataFrame([self._first_rows[code] for code in sorted(self._first_rows)],
                            columns=["host", "pid", "role", "dp_rank"])

    def events(self) -> TraceEvents:
        """The trace events of every window (the part files read back as they are read)."""
        self._flush_steps(np.inf)
        self.close()
        processes = _TraceProcesses(self.processes_frame())
        pid_of = {code: processes.pid_of[key] for code, key in enumerate(self.keys)
                  if key in processes.pid_of}
        pid_of[_REQUESTS] = processes.requests_pid
        tracks: dict = {}
        for (code, tid, track), domains in self.tracks.items():
            tracks.setdefault((pid_of[code], tid, track), set()).update(domains)
        trace = TraceEvents(self.origin if self.origin is not None else 0.0)
        trace.deferred += [_PlainPart(self.folder / f"{name}.jsonl", self.counts[name], pid_of)
                           for name in _PLAIN_PARTS]
        trace.events += processes.metadata_of(tracks, self.lanes.count)
        lookup = np.array([pid_of.get(code, 0) for code in range(-1, len(self.keys))],
                          dtype=np.int64)  # code + 1 -> trace pid
        for name in _FLOW_PARTS:
            trace.flows.add_made(self.counts[name],
                                 _flow_maker(self.folder / f"{name}.bin", lookup))
        return trace


class _PlainPart:
    """A part's events read back, each process code made its trace pid."""

    def __init__(self, path: Path, count: int, pid_of: dict) -> None:
        self._path, self._count, self._pid_of = path, count, pid_of

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict]:
        loads, pid_of = json.loads, self._pid_of
        with open(self._path, encoding="utf-8") as lines:
            for line in lines:
                event = loads(line)
                event["pid"] = pid_of[event["pid"]]
                yield event


def _flow_maker(path: Path, lookup: np.ndarray) -> Callable[[int, int], FlowChunk]:
    """The flow events ``first``..``stop`` of a part file (five int64 columns a row), read
    with plain reads: a memory map's pages, once read, counted in the process's memory
    (0.8 GB at x100)."""
    def make(first: int, stop: int) -> FlowChunk:
        block = np.fromfile(path, dtype=np.int64, count=(stop - first) * 5,
                            offset=first * 40).reshape(-1, 5)
        return FlowChunk(block[:, 0], block[:, 1], lookup[block[:, 2] + 1], block[:, 3],
                         block[:, 4])

    return make
