"""The trace's processes and thread tracks: pids, names, sort order, and the overlap tracks.

One trace process per (host, pid), named after its role; one track per OS thread, plus an
``(overlap <n>)`` track for spans that would break that thread's nesting.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.frame import ROLE_API_SERVER, ROLE_ENGINE_CORE, ROLE_WORKER
from otel_vllm_ascend.analysis.narrow_ints import narrowest

# Synthetic tids for overflow tracks: above any Linux tid (pid_max <= 2**22).
OVERLAP_TID_STRIDE = 10_000_000
REQUESTS_PROCESS_LABEL = "Requests"

_ROLE_LABELS = {ROLE_API_SERVER: "API server", ROLE_ENGINE_CORE: "EngineCore",
                ROLE_WORKER: "Worker"}
_ROLE_ORDER = {ROLE_API_SERVER: 1, ROLE_ENGINE_CORE: 2, ROLE_WORKER: 3}
_TRACK_ROWS = 65_536  # records read at a time for the tracks' names


class _TraceProcesses:
    """Trace pids and names: one per (host, pid); real pids kept unless two hosts share one."""

    def __init__(self, frame: pd.DataFrame) -> None:
        table = frame[["host", "pid", "role", "dp_rank"]]
        keys = table[["host", "pid"]].drop_duplicates().itertuples(index=False, name=None)
        self.keys = sorted(keys, key=lambda k: (str(k[0]), int(k[1])))
        pid_count: dict = {}
        for _, pid in self.keys:
            pid_count[pid] = pid_count.get(pid, 0) + 1
        next_free = max((int(pid) for _, pid in self.keys), default=0) + 1
        self.pid_of: dict = {}
        for host, pid in self.keys:
            if pid_count[pid] == 1:
                self.pid_of[(host, pid)] = int(pid)
            else:
                self.pid_of[(host, pid)] = next_free
                next_free += 1
        self.requests_pid = next_free
        self.label_of = {}
        self.order_of = {}
        first_rows = table.drop_duplicates(["host", "pid"])
        for host, pid, role, dp_rank in first_rows[["host", "pid", "role", "dp_rank"]].itertuples(
                index=False, name=None):
            label = _ROLE_LABELS.get(role, "process")
            if dp_rank is not None and not pd.isna(dp_rank):
                label += f" DP{int(dp_rank)}"
            self.label_of[(host, pid)] = f"{label} {host} {pid}".replace("  ", " ")
            self.order_of[(host, pid)] = _ROLE_ORDER.get(role, 4)

    def trace_pids(self, frame: pd.DataFrame) -> np.ndarray:
        if len(self.pid_of) == 1 or all(k[1] == v for k, v in self.pid_of.items()):
            return frame["pid"].to_numpy()  # the frame's own (narrow) array: no copy held
        return narrowest(np.fromiter((self.pid_of[(h, p)] for h, p in zip(frame["host"],
                                                                          frame["pid"])),
                                     dtype="int64", count=len(frame)),
                         np.int8, np.int16, np.int32)

    def metadata(self, slice_tids: np.ndarray, trace_pids: np.ndarray, tids: np.ndarray,
                 domains: list, lane_count: int) -> list[dict]:
        return self.metadata_of(track_domains(slice_tids, trace_pids, tids, domains),
                                lane_count)

    def metadata_of(self, tracks: dict, lane_count: int) -> list[dict]:
        """The processes', lanes' and tracks' names and order (``tracks``:
        :func:`track_domains`)."""
        events = []
        for index, key in enumerate(sorted(self.keys, key=lambda k: (self.order_of[k], k))):
            pid = self.pid_of[key]
            events.append(_meta("process_name", pid, None, name=self.label_of[key]))
            events.append(_meta("process_sort_index", pid, None, sort_index=index + 1))
        if lane_count:
            events.append(_meta("process_name", self.requests_pid, None,
                                name=REQUESTS_PROCESS_LABEL))
            events.append(_meta("process_sort_index", self.requests_pid, None, sort_index=0))
            for lane in range(1, lane_count + 1):
                events.append(_meta("thread_name", self.requests_pid, lane, name=f"lane {lane}"))
                events.append(_meta("thread_sort_index", self.requests_pid, lane,
                                    sort_index=lane))
        for (pid, tid, slice_tid), seen in sorted(tracks.items()):
            label = "/".join(sorted(d for d in seen if d))
            name = f"{label} thread {tid}" if label else f"thread {tid}"
            lane = slice_tid // OVERLAP_TID_STRIDE if slice_tid != tid else 0
            if lane:
                name += f" (overlap {lane})"
            events.append(_meta("thread_name", pid, slice_tid, name=name))
            events.append(_meta("thread_sort_index", pid, slice_tid,
                                sort_index=lane * 1000 + (0 if label else 999)))
        return _dedupe_thread_meta(events)


def track_domains(slice_tids: np.ndarray, trace_pids: np.ndarray, tids: np.ndarray,
                  domains: Any, into: Optional[dict] = None) -> dict:
    """(trace pid, tid, track) -> the domains of the records on that track, added to
    ``into`` (a new dict if None)."""
    tracks = {} if into is None else into
    # A chunk of records at a time: the whole columns as Python ints were the largest
    # transient of the trace's build (about 0.1 KB a record).
    for first in range(0, len(domains), _TRACK_ROWS):
        rows = slice(first, first + _TRACK_ROWS)
        for pid, tid, slice_tid, domain in zip(trace_pids[rows].tolist(), tids[rows].tolist(),
                                               slice_tids[rows].tolist(), domains[rows]):
            tracks.setdefault((pid, tid, slice_tid), set()).add(domain or "")
    return tracks


def _dedupe_thread_meta(events: list) -> list:
    seen = set()
    kept = []
    for event in events:
        key = (event["name"], event["pid"], event.get("tid"))
        if key not in seen:
            seen.add(key)
            kept.append(event)
    return kept


def _meta(kind: str, pid: int, tid: Optional[int], **args: Any) -> dict:
    event = {"ph": "M", "name": kind, "pid": pid, "args": args}
    if tid is not None:
        event["tid"] = tid
    return event


def _slice_tids(trace_pids: np.ndarray, tids: np.ndarray, start_ns: np.ndarray,
                end_ns: np.ndarray, names: list, domains: list) -> np.ndarray:
    """The track (tid) of every record: its own tid unless its span would break the nesting."""
    slice_tids = _narrowest(tids.astype("int64"))
    is_span = end_ns > start_ns
    rows = np.flatnonzero(is_span)
    if not len(rows):
        return slice_tids
    order = np.lexsort((-(end_ns[rows] - start_ns[rows]), start_ns[rows], tids[rows],
                        trace_pids[rows]))
    rows = rows[order]
    pids_sorted = trace_pids[rows]
    tids_sorted = tids[rows]
    starts = start_ns[rows]
    ends = end_ns[rows]
    same_track = (pids_sorted[1:] == pids_sorted[:-1]) & (tids_sorted[1:] == tids_sorted[:-1])
    overlapping = same_track & (starts[1:] < ends[:-1])
    if not overlapping.any():
        return slice_tids  # common case: sequential spans only
    slice_tids = slice_tids.astype("int64")  # overlap lanes add a stride to the tid
    # Tracks with overlaps: nest with a stack per lane; a span that sticks out of the open span
    # on every existing lane goes to a new lane of that thread.
    bad_tracks = set(zip(pids_sorted[1:][overlapping].tolist(),
                         tids_sorted[1:][overlapping].tolist()))
    lanes: dict = {}
    for row, pid, tid, start, end in zip(rows.tolist(), pids_sorted.tolist(),
                                         tids_sorted.tolist(), starts.tolist(), ends.tolist()):
        if (pid, tid) in bad_tracks:
            slice_tids[row] = tid + place_on_lanes(lanes.setdefault((pid, tid), [[]]), start,
                                                   end) * OVERLAP_TID_STRIDE
    return _narrowest(slice_tids)


def place_on_lanes(stacks: list, start: int, end: int) -> int:
    """The lane of a span of one thread, its spans placed in order of start (the longer first):
    the first lane whose open spans it nests in (a stack per lane of the open spans' ends),
    else a new one. ``stacks`` is updated."""
    for lane, stack in enumerate(stacks):
        while stack and stack[-1] <= start:
            stack.pop()
        if not stack or end <= stack[-1]:
            stack.append(end)
            return lane
    stacks.append([end])
    return len(stacks) - 1


def _narrowest(values: np.ndarray) -> np.ndarray:
    """Track ids held while the trace lives in the narrowest integer type that holds them."""
    return narrowest(values, np.int8, np.int16, np.int32)
