"""The trace's ``Requests`` process and flows: one slice per request on packed lanes, split
into ``queued`` / ``prefill`` / ``decode``, and one flow arrow chain through its engine steps.
"""

from __future__ import annotations

import heapq
import math
from array import array
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.narrow_ints import narrowest
from otel_vllm_ascend.analysis.rid_lists import rid_sequence
from otel_vllm_ascend.analysis.rid_pairs import RequestCodes, rows_by_request
from otel_vllm_ascend.analysis.trace_file import DeferredEvents, FlowChunk, _FlowParts, _ts
from otel_vllm_ascend.analysis.trace_records import (
    _SCHEDULE_RECORD,
    _json_safe,
    _step_record_name,
)

_REQUEST_ID_COLUMNS = ("http_rid", "rid", "request_id")
# Request-table columns shown in each request slice's args.
_REQUEST_INFO_COLUMNS = ("ttft_ms", "queue_wait_ms", "e2e_ms", "tpot_ms", "prompt_tokens",
                         "reply_tokens", "partial")
_LIFECYCLE_RECORDS = frozenset({"httpReq", _SCHEDULE_RECORD, "httpRes"})
# Every request-table column the trace reads (a caller may keep only these for it).
REQUEST_COLUMNS = _REQUEST_ID_COLUMNS + ("arrival_us", "first_scheduled_us", "first_token_us",
                                         "end_us") + _REQUEST_INFO_COLUMNS


def _request_events(frame: pd.DataFrame, requests: Optional[pd.DataFrame],
                    trace_pids: np.ndarray, slice_tids: np.ndarray, start_ns: Any,
                    end_ns: Any, names: list, origin_us: float,
                    lanes_pid: int, flows: _FlowParts) -> tuple[DeferredEvents, int]:
    """Request lifecycle slices on packed lanes plus one flow per request through its steps.

    The slices are made each time the trace is read (:class:`_RequestSlices`): held as dicts,
    four per request with the request's args, they were 0.4 GB at x100.
    """
    steps = _RequestSteps(frame, trace_pids, slice_tids, start_ns, end_ns, names)
    rids, lifecycle = _request_lifecycle(frame, requests, start_ns, end_ns, names, origin_us)
    timed = len(rids)
    known_ids = set(rids)
    rids += [rid for rid in steps.groups if rid not in known_ids]
    del known_ids
    lanes = RequestLanes()
    slices, ends, group_flow = lay_out(steps, rids, lifecycle, timed, _RequestInfos(requests),
                                       lanes_pid, lanes)
    if ends is not None:
        flows.add_held(ends)
        flows.add_made(len(steps), steps.flow_maker(group_flow))
    return slices.deferred(), lanes.count


class RequestLanes:
    """The Requests process's lanes and flows so far: a request's slice goes on the lane that
    freed first (strictly before it starts), else on a new one; its flow is numbered next.
    ``--stream`` carries one from window to window."""

    def __init__(self) -> None:
        self.free: list = []  # heap of (end_ns, lane)
        self.count = 0  # lanes made
        self.flows = 0  # flows numbered

    def place(self, start: int, finish: int) -> tuple[int, int]:
        """(lane, flow id) of the next request's slice."""
        # Strictly earlier: a flow start on a shared boundary would be ambiguous.
        if self.free and self.free[0][0] < start:
            _, lane = heapq.heapreplace(self.free, (finish, self.free[0][1]))
        else:
            self.count += 1
            lane = self.count
            heapq.heappush(self.free, (finish, lane))
        self.flows += 1
        return lane, self.flows


def lay_out(steps: _RequestSteps, rids: list, lifecycle: np.ndarray, timed: int,
            infos: _RequestInfos, lanes_pid: int, lanes: RequestLanes
            ) -> tuple[_RequestSlices, Optional[FlowChunk], np.ndarray]:
    """The slices of the requests ``rids`` (the first ``timed`` with their ``lifecycle``
    rows, the others timed from their steps), placed by ``lanes`` in order of their (start,
    finish); returns the slices, their flows' start and finish events (None if no request
    has a step) and each step group's flow id (0: no request of these)."""
    # Per request kept, as int64 (a sorted list of a tuple of eight per request was about 200
    # bytes a request): start, finish, arrival, scheduled, first token, request table row,
    # group index; an unknown value is ``none``.
    none = _RequestSlices._NONE
    numbers = array("q")
    kept = array("q")  # position in ``rids``
    for position, rid in enumerate(rids):
        if position < timed:
            arrival, scheduled, first_token, end, info = (
                None if value == none else value for value in lifecycle[position].tolist())
        else:
            arrival = scheduled = first_token = end = info = None
        group = steps.groups.get(rid)
        known = [t for t in (arrival, scheduled, first_token, end) if t is not None]
        if group is not None:
            first, last = steps.first(group), steps.last(group)
            if info is None:
                # Not in the request table: time the phases from the first step it was in.
                scheduled = steps.start(first) if scheduled is None else scheduled
                first_token = steps.end(first) if first_token is None else first_token
            known += [steps.start(first), steps.end(last),
                      steps.point(last) + 2]  # the finish lies after the last step
        if not known:
            continue
        start = min(known)
        finish = max(max(known), start + 3)  # room for flow start and finish strictly inside
        numbers.extend((start, finish, none if arrival is None else arrival,
                        none if scheduled is None else scheduled,
                        none if first_token is None else first_token,
                        none if info is None else info, none if group is None else group))
        kept.append(position)
    table = np.frombuffer(numbers, dtype=np.int64).reshape(-1, 7)
    # By (start, finish), ties in the order above: what a stable sort of the tuples gave.
    order = _span_order(table[:, 0], table[:, 1])
    slices = _RequestSlices(lanes_pid, infos)
    # s and f events: phase, flow id, lane, ts; four int64 a row (a tuple of Python ints per
    # event was about 150 bytes, 60 MB at x100, held beside the spans).
    ends = array("q")
    group_flow = np.zeros(len(steps.groups), dtype="int64")
    for index in order.tolist():
        start, finish, arrival, scheduled, first_token, info, group = table[index].tolist()
        lane, flow_id = lanes.place(start, finish)
        slices.add(rids[kept[index]], lane, start, finish, arrival, scheduled, first_token,
                   None if info == none else info)
        if group != none:
            group_flow[group] = flow_id
            # 1 ns inside the slice: a flow event on a slice's exact start could be read before
            # the slice opens and bind to nothing.
            ends.extend((0, flow_id, lane, start + 1, 2, flow_id, lane, finish - 1))
    del table, numbers, kept, order
    if not ends:
        return slices, None, group_flow
    table = np.frombuffer(ends, dtype=np.int64).reshape(-1, 4)
    phase, flow_ids, lane_ids, ts = (table[:, column].copy() for column in range(4))
    return slices, FlowChunk(phase, flow_ids, np.full(len(phase), lanes_pid), lane_ids,
                             ts), group_flow


def _span_order(starts: np.ndarray, finishes: np.ndarray) -> np.ndarray:
    """Positions by (start, finish), ties in position order: the order a stable sort of
    ``(start, finish, ...)`` tuples by their first two gives."""
    return np.lexsort((finishes, starts))


class _RequestInfos:
    """The request table's columns shown in a request slice's args, read a few rows at a time
    (``to_dict`` of every request at once: 0.2 GB of dicts at x100)."""

    def __init__(self, requests: Optional[pd.DataFrame]) -> None:
        columns = ([c for c in _REQUEST_INFO_COLUMNS if c in requests.columns]
                   if requests is not None else [])
        self._table = requests[columns] if columns else None

    def args(self, rows: list) -> list[dict]:
        """The args of the request table rows ``rows`` (``None``: not in the table)."""
        known = [row for row in rows if row is not None]
        if self._table is None or not known:
            return [{} for _ in rows]
        records = iter(self._table.iloc[known].to_dict("records"))
        return [{} if row is None else {k: _plain(v) for k, v in next(records).items()}
                for row in rows]


class _RequestSlices:
    """Each request's slice and its ``queued`` / ``prefill`` / ``decode`` children, held as a
    few numbers per request and made into event dicts a chunk of requests at a time."""

    _NONE = np.iinfo(np.int64).min  # an unknown time

    def __init__(self, pid: int, infos: _RequestInfos) -> None:
        self._pid = pid
        self._infos = infos
        self._rids: list = []
        self._info_rows: list = []  # row in the request table, or None
        # Per request: lane, start, finish, arrival, scheduled, first token, as int64 (a tuple
        # of Python ints per request was about 200 bytes, 40 MB at x100).
        self._numbers = array("q")

    def add(self, rid: str, lane: int, start: int, finish: int, arrival: Optional[int],
            scheduled: Optional[int], first_token: Optional[int], info_row: Optional[int]
            ) -> None:
        none = self._NONE
        self._rids.append(rid)
        self._info_rows.append(info_row)
        self._numbers.extend((lane, start, finish, none if arrival is None else arrival,
                              none if scheduled is None else scheduled,
                              none if first_token is None else first_token))

    def deferred(self) -> DeferredEvents:
        rids, info_rows, infos, pid, none = (self._rids, self._info_rows, self._infos,
                                             self._pid, self._NONE)
        numbers = np.array(self._numbers, dtype="int64").reshape(-1, 6)  # a copy
        self._numbers = array("q")

        def make(rows: slice, state: dict) -> list:
            events: list = []
            for rid, info, (lane, start, finish, arrival, scheduled, first_token) in zip(
                    rids[rows], infos.args(info_rows[rows]), numbers[rows].tolist()):
                args = {"rid": rid, **info}
                events.append({"ph": "X", "name": f"request {rid}", "cat": "request",
                               "pid": pid, "tid": lane, "ts": _ts(start),
                               "dur": _ts(finish - start), "args": _json_safe(args)})
                events += _phase_slices(pid, lane, start, finish,
                                        None if arrival == none else arrival,
                                        None if scheduled == none else scheduled,
                                        None if first_token == none else first_token)
            return events

        return DeferredEvents(len(rids), make)


def _phase_slices(pid: int, lane: int, start: int, finish: int, arrival: Optional[int],
                  scheduled: Optional[int], first_token: Optional[int]) -> list[dict]:
    """``queued`` / ``prefill`` / ``decode`` children, clamped so they nest and never overlap."""
    marks = [arrival, scheduled, first_token, finish]
    names = ("queued", "prefill", "decode")
    events = []
    floor = start
    for index, name in enumerate(names):
        begin, stop = marks[index], marks[index + 1]
        if begin is None or stop is None:
            continue
        begin = min(max(begin, floor), finish)
        stop = min(max(stop, begin), finish)
        if stop > begin:
            events.append({"ph": "X", "name": name, "cat": "request", "pid": pid, "tid": lane,
                           "ts": _ts(begin), "dur": _ts(stop - begin)})
            floor = stop
    return events


class _RequestSteps:
    """Every (request, engine step) pair, grouped by request in time order.

    ``rows`` holds each pair's step (its position among the steps in time order), so the pairs
    (two million at ten times the benchmark capture) cost 4 bytes each; the steps' times, pids
    and tracks are looked up when needed.
    ``groups`` maps a request id to its group index (its pairs: :meth:`first` to
    :meth:`last` in ``rows``; a tuple of three per request here was about 150 bytes more a
    request); a step is
    ``modelExec`` (else ``batchFrameworkProcessing``) and only spans count, since flows bind to
    slices. A step's *point* is where the request's flow passes it: 1 ns inside its slice, where
    the step's own nested children rarely start.
    """

    def __init__(self, frame: pd.DataFrame, trace_pids: np.ndarray, slice_tids: np.ndarray,
                 start_ns: Any, end_ns: Any, names: list) -> None:
        step_name = _step_record_name(names)
        rows = np.zeros(0, dtype="int64")
        starts = ends = np.zeros(0, dtype="int64")
        if step_name is not None:
            # Compared as category codes: no object array of every record's name.
            rows = np.flatnonzero((frame["name"] == step_name).to_numpy(dtype=bool))
            starts, ends = start_ns[rows], end_ns[rows]
            spans = ends > starts
            rows, starts, ends = rows[spans], starts[spans], ends[spans]
            order = np.argsort(starts, kind="stable")
            rows, starts, ends = rows[order], starts[order], ends[order]
            del spans, order
        coder = RequestCodes()
        # Each request's steps in time order: the steps are in time order already.
        # Each pair's step (its position in ``rows``) written straight to its place (a second
        # array of positions held beside it was 80 MB at x100); the steps' times and tracks
        # are kept per step, not per record.
        self.rows, begins = rows_by_request(rid_sequence(frame["rids"].iloc[rows]), coder,
                                            narrowest(np.arange(len(rows)), np.int32))
        self._start_ns, self._end_ns = starts, ends
        self._pids, self._tids = trace_pids[rows], slice_tids[rows]
        self._begins = begins
        self._stops = np.append(begins[1:], len(self.rows))
        self.groups = {rid: index for index, rid in enumerate(coder.ids().tolist())}

    def __len__(self) -> int:
        return len(self.rows)

    def first(self, group: int) -> int:
        """The group's first pair."""
        return int(self._begins[group])

    def last(self, group: int) -> int:
        """The group's last pair."""
        return int(self._stops[group]) - 1

    def start(self, pair: int) -> int:
        return int(self._start_ns[self.rows[pair]])

    def end(self, pair: int) -> int:
        return int(self._end_ns[self.rows[pair]])

    def point(self, pair: int) -> int:
        start, end = self.start(pair), self.end(pair)
        return start + 1 if end - start > 1 else start

    def flow_maker(self, group_flow: np.ndarray) -> Callable[[int, int], FlowChunk]:
        """The ``t`` flow events of the pairs ``first``..``stop``, made when the trace is
        read: each pair's flow is its group's (``group_flow``), on its step's track, at its
        step's point."""
        # Only arrays are held (not ``groups``, a dict per request): the trace lives on.
        pair_rows, begins = self.rows, self._begins
        start_ns, end_ns, pids, tids = self._start_ns, self._end_ns, self._pids, self._tids

        def make(first: int, stop: int) -> FlowChunk:
            rows = pair_rows[first:stop]
            group = np.searchsorted(begins, np.arange(first, stop), side="right") - 1
            points = start_ns[rows]
            points += (end_ns[rows] - points) > 1
            return FlowChunk(np.ones(len(rows), dtype="int8"), group_flow[group], pids[rows],
                             tids[rows], points)

        return make


def _request_lifecycle(frame: pd.DataFrame, requests: Optional[pd.DataFrame], start_ns: Any,
                       end_ns: Any, names: list, origin_us: float
                       ) -> tuple[list, np.ndarray]:
    """The request ids and, per id, (arrival, first scheduled, first token, end, request table
    row) in ns since the origin as one int64 table, ``_RequestSlices._NONE`` where unknown
    (the row: requests timed from their records, no request table). Ids in the order a dict
    of them keeps (first appearance), each with its last values.

    A table, not a dict of a tuple of five Python ints per request (about 250 bytes a
    request, 50 MB at x100, held through the spans' build)."""
    none = _RequestSlices._NONE
    if requests is not None and not requests.empty:
        id_column = next((c for c in _REQUEST_ID_COLUMNS if c in requests.columns), None)
        if id_column is not None:
            ids = [str(rid) for rid in requests[id_column].tolist()]
            if len(set(ids)) == len(ids):  # else the dict's order and last values, below
                table = np.empty((len(ids), 5), dtype=np.int64)
                for position, name in enumerate(("arrival_us", "first_scheduled_us",
                                                 "first_token_us", "end_us")):
                    table[:, position] = _ns_column(requests, name, origin_us)
                table[:, 4] = np.arange(len(ids))  # the args come later, from the row
                return ids, table
            lifecycle: dict = {}
            for index, (rid, arrival, scheduled, first_token, end) in enumerate(zip(
                    ids, _ns_column(requests, "arrival_us", origin_us).tolist(),
                    _ns_column(requests, "first_scheduled_us", origin_us).tolist(),
                    _ns_column(requests, "first_token_us", origin_us).tolist(),
                    _ns_column(requests, "end_us", origin_us).tolist())):
                lifecycle[rid] = (arrival, scheduled, first_token, end, index)
            return _lifecycle_table(lifecycle)
    # No request table: arrival = first httpReq, first scheduling = first schedule span,
    # end = last httpRes of each request id (first token: see _request_events).
    start_ns, end_ns = start_ns[:], end_ns[:]  # whole arrays, made once (trace._NsTimes)
    lifecycle = {}
    for row, (name, rids) in enumerate(zip(names, frame["rids"].tolist())):
        if name not in _LIFECYCLE_RECORDS or not rids:
            continue
        start = int(start_ns[row])
        for rid in rids:
            arrival, scheduled, first_token, end, info = lifecycle.get(
                rid, (None, None, None, None, None))
            if name == "httpReq":
                arrival = start if arrival is None else min(arrival, start)
            elif name == _SCHEDULE_RECORD:
                scheduled = start if scheduled is None else min(scheduled, start)
            else:
                end = int(end_ns[row]) if end is None else max(end, int(end_ns[row]))
            lifecycle[rid] = (arrival, scheduled, first_token, end, info)
    return _lifecycle_table({rid: tuple(none if value is None else value for value in values)
                             for rid, values in lifecycle.items()})


def _ns_column(requests: pd.DataFrame, name: str, origin_us: float) -> np.ndarray:
    """A request table time column (µs since the epoch) as int64 ns since the origin, each as
    ``int(round((v - origin_us) * 1000))`` of its float; ``_RequestSlices._NONE`` where the
    column is missing or the value not finite."""
    none = _RequestSlices._NONE
    if name not in requests.columns:
        return np.full(len(requests), none, dtype=np.int64)
    values = requests[name].to_numpy(dtype="float64", na_value=np.nan)
    return np.array([none if not math.isfinite(v) else int(round((v - origin_us) * 1000))
                     for v in values.tolist()], dtype=np.int64)


def _lifecycle_table(lifecycle: dict) -> tuple[list, np.ndarray]:
    """A dict of id -> five values (ints, ``_RequestSlices._NONE`` where unknown) as the ids
    and an int64 table."""
    table = np.array(list(lifecycle.values()), dtype=np.int64).reshape(-1, 5)
    return list(lifecycle), table


def _plain(value: Any) -> Any:
    """numpy / pandas scalars -> JSON-ready Python values (NA -> None)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return None  # per-step lists stay out of the slice args
    return value
