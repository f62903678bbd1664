"""``chrome_tracing.json``: the capture as a timeline for Perfetto (ui.perfetto.dev) or chrome://tracing.

Open the file in https://ui.perfetto.dev ("Open trace file"; it is read locally, nothing is
uploaded) or in chrome://tracing. What you see:

* one process per vLLM process, named ``API server <host> <pid>``, ``EngineCore <host> <pid>``
  (``DP<n>`` added under data parallelism) or ``Worker <host> <pid>``, with one thread track per
  OS thread that wrote records (named after the record domains it wrote);
* every span as a slice (``X``) and every event as an instant (``i``) on its thread's track, with
  the record's attributes, metrics and request ids (request ids are listed for records about up
  to 16 requests; batch slices give counts and are linked to their requests by the flows);
* a ``Requests`` process whose lanes hold one slice per request, ``request <id>``, split into
  ``queued`` (arrival to first scheduling), ``prefill`` (to the first token) and ``decode`` (to the
  end). Requests are packed into as few lanes as possible without overlap;
* one flow arrow chain per request: it starts at the request's arrival, steps through every engine
  step (``modelExec``, else ``batchFrameworkProcessing``) that scheduled the request, and finishes
  at the request's end: exactly one start and one finish per request (each flow event lies 1 ns
  inside the slice it belongs to, never on a boundary, so importers bind it unambiguously);
* counters on each EngineCore: ``KV cache`` (usage %), ``KV blocks`` (used / free),
  ``running queue`` / ``waiting queue`` sizes, ``batch size`` (requests per step) and
  ``scheduled tokens`` (tokens per step). Metric samples (records without a message ``type``,
  e.g. the ``hostUsage`` / ``deviceMemory`` samplers) become counters named after the record
  (and its scope), one series per metric, on the process that sampled them.

Deviations from msserviceprofiler's trace, on purpose:

* the file is an object ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``
  and ``ts`` counts µs from ``otherData.time_origin_unix_us`` (the start of the capture's first
  second, also printed as UTC text), not from the Unix epoch: µs since 1970 as a JSON double
  cannot keep nanoseconds, and Perfetto multiplies by 1000 before storing, which loses up to
  ~0.25 µs and can make a nested slice stick out of its parent;
* slices that would overlap on one thread without nesting (for example spans of interleaved
  coroutines) move to an extra ``(overlap <n>)`` track of that thread instead of breaking
  the track;
* KV counters carry the real values (the reference writes 0 for vLLM captures), and process /
  thread names are written (the reference writes neither);
* link records (request-id mappings) and KV records are not drawn as instants: the mappings are
  already applied to every request id, the KV records are the counters.
"""

from __future__ import annotations

import gc
import math
from typing import Any, Optional

import numpy as np
import pandas as pd

# The timeline's parts, each in its own module; this one puts them together.
from otel_vllm_ascend.analysis.allocator import give_back_free_memory
from otel_vllm_ascend.analysis.trace_file import (
    DeferredEvents,
    TraceEvents,
    WrittenAsRead,
    json_written,
    write_chrome_trace,
)
from otel_vllm_ascend.analysis.trace_records import (
    _SCHEDULE_RECORD,
    _counter_events,
    _metric_samples,
    _record_events,
    _step_record_name,
)
from otel_vllm_ascend.analysis.trace_requests import REQUEST_COLUMNS, _request_events
from otel_vllm_ascend.analysis.trace_tracks import _slice_tids, _TraceProcesses

__all__ = ["RECORD_COLUMNS", "REQUEST_COLUMNS", "TraceEvents", "WrittenAsRead",
           "build_chrome_trace", "json_written", "trace_origin_us", "write_chrome_trace"]

# The records frame's columns the trace reads (all but the source, mark id and duration).
RECORD_COLUMNS = ("host", "pid", "tid", "role", "dp_rank", "name", "domain", "type", "start_us",
                  "end_us", "rids", "rid_detail", "batch_type", "metrics", "metric_incs",
                  "scopes", "attrs")


def trace_origin_us(frame: pd.DataFrame) -> float:
    """The trace's time origin: the start of the first whole second of the capture, in µs."""
    if frame.empty:
        return 0.0
    first = float(np.nanmin(frame["start_us"].to_numpy(dtype="float64")))
    return math.floor(first / 1e6) * 1e6 if math.isfinite(first) else 0.0


def build_chrome_trace(frame: pd.DataFrame, requests: Optional[pd.DataFrame] = None,
                       batches: Optional[pd.DataFrame] = None,
                       kvcache: Optional[pd.DataFrame] = None) -> TraceEvents:
    """All trace events of the records ``frame`` (see the module docstring for the layout).

    ``requests`` (from ``build_requests``) supplies each request's arrival, first scheduling,
    first token and end; requests it does not know are timed from their records. Counters are
    read from the frame's own records so each lands on the process that wrote it; ``batches``
    and ``kvcache`` are accepted for the builders' common signature and not needed here.
    ``ts`` values count µs from ``result.origin_us`` (:func:`trace_origin_us`).
    """
    del batches, kvcache  # counters come straight from the records, per process
    # The frame holds millions of small objects; the collector rescanning them while the trace
    # allocates would cost more than building it. Nothing built here forms reference cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _build(frame, requests)
    finally:
        if collecting:
            gc.enable()


def _build(frame: pd.DataFrame, requests: Optional[pd.DataFrame]) -> TraceEvents:
    origin = trace_origin_us(frame)
    trace = TraceEvents(origin)
    events = trace.events
    if frame.empty:
        return trace
    processes = _TraceProcesses(frame)
    start_us = frame["start_us"].to_numpy(dtype="float64")  # the frame's own arrays: no copy
    end_us = frame["end_us"].to_numpy(dtype="float64")
    start_ns = _to_ns(start_us, origin)
    end_ns = np.maximum(_to_ns(end_us, origin), start_ns)
    trace_pids = processes.trace_pids(frame)
    tids = frame["tid"].to_numpy()  # the frame's own (narrow) array: no copy held
    # The names and domains as the frame holds them (category codes): lists of them were 8
    # bytes a record (40 MB at x100) held through the build; readers take a chunk at a time.
    names = frame["name"].array
    domains = frame["domain"].array

    slice_tids = _slice_tids(trace_pids, tids, start_ns, end_ns, names, domains)
    samples = _metric_samples(frame, start_ns, end_ns)
    # From here on the times of the rows read, made from the frame's µs when read: held
    # whole (16 bytes a record, 40 MB at x100) they were under the request events' build and
    # through the trace's writing.
    del start_ns, end_ns
    start_ns, end_ns = _NsTimes(start_us, origin), _NsTimes(end_us, origin, start_us)
    step_name = _step_record_name(names, prefer=_SCHEDULE_RECORD)

    # The records' slices and counters are made again each time the trace is read (written to
    # the JSON file, to profiler.db): held, they would be most of the trace's memory. Names
    # and domains are taken from the frame's category codes a chunk at a time then (the
    # lists, eight bytes a record, are not held past the build).
    def record_events(rows: slice, state: dict) -> list:
        return _record_events(frame.iloc[rows], trace_pids[rows], slice_tids[rows],
                              start_ns[rows], end_ns[rows], _text(frame, "name", rows),
                              _text(frame, "domain", rows), samples[rows].tolist())

    def counter_events(rows: slice, state: dict) -> list:
        return _counter_events(frame.iloc[rows], trace_pids[rows], start_ns[rows],
                               _text(frame, "name", rows), _text(frame, "domain", rows),
                               samples[rows].tolist(), step_name,
                               state.setdefault("total_blocks", {}))

    trace.deferred += [DeferredEvents(len(frame), record_events),
                       DeferredEvents(len(frame), counter_events)]
    # The tracks' and processes' temporaries (a record's length each, 0.09 GB at x100) are
    # the heap's; the request steps' pairs are larger than what the heap gives (their own
    # mapping): the heap's free pages given back first (allocator.py).
    give_back_free_memory()
    lanes_pid = processes.requests_pid
    request_slices, lane_count = _request_events(
        frame, requests, trace_pids, slice_tids, start_ns, end_ns, names, origin, lanes_pid,
        trace.flows)
    trace.deferred.append(request_slices)  # after the records' events, as it always came
    events += processes.metadata(slice_tids, trace_pids, tids, domains, lane_count)
    return trace


def _text(frame: pd.DataFrame, column: str, rows: slice) -> list:
    """A text column's values of ``rows`` as a list of str (the values ``tolist`` gives)."""
    return frame[column].iloc[rows].tolist()


class _NsTimes:
    """Record times in whole ns since the origin, made from the frame's µs times (``_to_ns``)
    for the rows asked: ``times[rows]``; end times (``floor_us`` given) are never before the
    start. The values the whole converted array holds at those rows, not held."""

    def __init__(self, values_us: np.ndarray, origin_us: float,
                 floor_us: Optional[np.ndarray] = None) -> None:
        self._values_us = values_us
        self._origin_us = origin_us
        self._floor_us = floor_us

    def __len__(self) -> int:
        return len(self._values_us)

    def __getitem__(self, rows: Any) -> Any:
        times = _to_ns(self._values_us[rows], self._origin_us)
        if self._floor_us is None:
            return times
        return np.maximum(times, _to_ns(self._floor_us[rows], self._origin_us))


def _to_ns(values_us: np.ndarray, origin_us: float) -> np.ndarray:
    """µs since the epoch -> whole ns since the origin (NaN -> origin)."""
    rel = np.nan_to_num(values_us - origin_us, nan=0.0)
    return np.rint(rel * 1000.0).astype("int64")
