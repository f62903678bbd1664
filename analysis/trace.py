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
import heapq
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.frame import ROLE_API_SERVER, ROLE_ENGINE_CORE, ROLE_WORKER

# Records about at most this many requests list their ids in the slice args; larger batches
# give a count (their members are reachable through the flows), which keeps the file small.
MAX_LISTED_RIDS = 16
# Synthetic tids for overflow tracks: above any Linux tid (pid_max <= 2**22).
OVERLAP_TID_STRIDE = 10_000_000
FLOW_CATEGORY = "request"
FLOW_NAME = "request"
REQUESTS_PROCESS_LABEL = "Requests"
WRITE_CHUNK_EVENTS = 50_000

_KV_DOMAINS = frozenset({"Schedule.KVCache", "KVCache"})
_COUNTER_RECORDS = frozenset({"KVCacheStatus", "Free"})
_QUEUE_RECORDS = frozenset({"Enqueue", "Dequeue"})
_SKIPPED_RECORDS = frozenset({"link", "Meta"})
_STEP_RECORDS = ("modelExec", "batchFrameworkProcessing")
_SCHEDULE_RECORD = "batchFrameworkProcessing"
_ROLE_LABELS = {ROLE_API_SERVER: "API server", ROLE_ENGINE_CORE: "EngineCore",
                ROLE_WORKER: "Worker"}
_ROLE_ORDER = {ROLE_API_SERVER: 1, ROLE_ENGINE_CORE: 2, ROLE_WORKER: 3}
_REQUEST_ID_COLUMNS = ("http_rid", "rid", "request_id")
# Request-table columns shown in each request slice's args.
_REQUEST_INFO_COLUMNS = ("ttft_ms", "queue_wait_ms", "e2e_ms", "tpot_ms", "prompt_tokens",
                         "reply_tokens", "partial")
_NUMBER_TYPES = frozenset({int, float})
_LIFECYCLE_RECORDS = frozenset({"httpReq", _SCHEDULE_RECORD, "httpRes"})


class TraceEvents(Sequence):
    """The trace events, read like a list of dicts, plus the time origin their ``ts`` count from.

    Flow events are most of a trace (one per request per engine step), so they are kept as
    compact columns and turned into dicts (or straight into JSON text by
    :func:`write_chrome_trace`) only when read.
    """

    def __init__(self, origin_us: float = 0.0) -> None:
        self.origin_us = origin_us
        self.events: list[dict] = []
        self.flows = _FlowColumns()

    def __len__(self) -> int:
        return len(self.events) + len(self.flows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("trace event index out of range")
        if index < len(self.events):
            return self.events[index]
        return self.flows.event(index - len(self.events))

    def __iter__(self) -> Iterator[dict]:
        yield from self.events
        yield from self.flows


class _FlowColumns:
    """Flow events (``s``/``t``/``f``) as numpy columns: about 33 bytes each instead of ~450."""

    _PHASES = "stf"

    def __init__(self) -> None:
        self.phase = np.zeros(0, dtype="int8")
        self.flow_id = self.pid = self.tid = self.ts_ns = np.zeros(0, dtype="int64")

    def __len__(self) -> int:
        return len(self.phase)

    def extend(self, phase: np.ndarray, flow_id: np.ndarray, pid: np.ndarray, tid: np.ndarray,
               ts_ns: np.ndarray) -> None:
        self.phase = np.concatenate((self.phase, np.asarray(phase, dtype="int8")))
        self.flow_id = np.concatenate((self.flow_id, np.asarray(flow_id, dtype="int64")))
        self.pid = np.concatenate((self.pid, np.asarray(pid, dtype="int64")))
        self.tid = np.concatenate((self.tid, np.asarray(tid, dtype="int64")))
        self.ts_ns = np.concatenate((self.ts_ns, np.asarray(ts_ns, dtype="int64")))

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
    start_ns = _to_ns(frame["start_us"].to_numpy(dtype="float64"), origin)
    end_ns = np.maximum(_to_ns(frame["end_us"].to_numpy(dtype="float64"), origin), start_ns)
    trace_pids = processes.trace_pids(frame)
    tids = frame["tid"].to_numpy(dtype="int64")
    names = frame["name"].tolist()
    domains = frame["domain"].tolist()

    slice_tids = _slice_tids(trace_pids, tids, start_ns, end_ns, names, domains)
    samples = _metric_samples(frame, start_ns, end_ns)
    events += _record_events(frame, trace_pids, slice_tids, start_ns, end_ns, names, domains,
                             samples)
    events += _counter_events(frame, trace_pids, start_ns, names, domains, samples)
    lanes_pid = processes.requests_pid
    request_events, lane_count = _request_events(
        frame, requests, trace_pids, slice_tids, start_ns, end_ns, names, origin, lanes_pid,
        trace.flows)
    events += request_events
    events += processes.metadata(slice_tids, trace_pids, tids, domains, lane_count)
    return trace


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
        plain, flows = events.events, events.flows
    else:
        plain, flows = list(events), _FlowColumns()
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"displayTimeUnit":"ms","otherData":')
        out.write(encode(other))
        out.write(',"traceEvents":[\n')
        separator = ""
        for first in range(0, len(plain), WRITE_CHUNK_EVENTS):
            text = encode(plain[first:first + WRITE_CHUNK_EVENTS])  # "[...]": one C-level call
            out.write(separator)
            out.write(text[1:-1])
            separator = ",\n"
        for first in range(0, len(flows), WRITE_CHUNK_EVENTS):
            out.write(separator)
            out.write(flows.json_lines(first, first + WRITE_CHUNK_EVENTS))
            separator = ",\n"
        out.write("\n]}\n")
    return path


def _to_ns(values_us: np.ndarray, origin_us: float) -> np.ndarray:
    """µs since the epoch -> whole ns since the origin (NaN -> origin)."""
    rel = np.nan_to_num(values_us - origin_us, nan=0.0)
    return np.rint(rel * 1000.0).astype("int64")


def _ts(ns: int) -> float:
    return ns / 1000.0


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
            return frame["pid"].to_numpy(dtype="int64")
        return np.fromiter((self.pid_of[(h, p)] for h, p in zip(frame["host"], frame["pid"])),
                           dtype="int64", count=len(frame))

    def metadata(self, slice_tids: np.ndarray, trace_pids: np.ndarray, tids: np.ndarray,
                 domains: list, lane_count: int) -> list[dict]:
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
        track_domains: dict = {}
        for pid, tid, slice_tid, domain in zip(trace_pids.tolist(), tids.tolist(),
                                               slice_tids.tolist(), domains):
            track_domains.setdefault((pid, tid, slice_tid), set()).add(domain or "")
        for (pid, tid, slice_tid), seen in sorted(track_domains.items()):
            label = "/".join(sorted(d for d in seen if d))
            name = f"{label} thread {tid}" if label else f"thread {tid}"
            lane = slice_tid // OVERLAP_TID_STRIDE if slice_tid != tid else 0
            if lane:
                name += f" (overlap {lane})"
            events.append(_meta("thread_name", pid, slice_tid, name=name))
            events.append(_meta("thread_sort_index", pid, slice_tid,
                                sort_index=lane * 1000 + (0 if label else 999)))
        return _dedupe_thread_meta(events)


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


def _is_counter_record(name: str, domain: str) -> bool:
    return name in _COUNTER_RECORDS and domain in _KV_DOMAINS


def _slice_tids(trace_pids: np.ndarray, tids: np.ndarray, start_ns: np.ndarray,
                end_ns: np.ndarray, names: list, domains: list) -> np.ndarray:
    """The track (tid) of every record: its own tid unless its span would break the nesting."""
    slice_tids = tids.copy()
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
    # Tracks with overlaps: nest with a stack per lane; a span that sticks out of the open span
    # on every existing lane goes to a new lane of that thread.
    bad_tracks = set(zip(pids_sorted[1:][overlapping].tolist(),
                         tids_sorted[1:][overlapping].tolist()))
    lanes: dict = {}
    for row, pid, tid, start, end in zip(rows.tolist(), pids_sorted.tolist(),
                                         tids_sorted.tolist(), starts.tolist(), ends.tolist()):
        if (pid, tid) not in bad_tracks:
            continue
        stacks = lanes.setdefault((pid, tid), [[]])
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                slice_tids[row] = tid + lane * OVERLAP_TID_STRIDE
                break
        else:
            stacks.append([end])
            slice_tids[row] = tid + (len(stacks) - 1) * OVERLAP_TID_STRIDE
    return slice_tids


def _record_events(frame: pd.DataFrame, trace_pids: np.ndarray, slice_tids: np.ndarray,
                   start_ns: np.ndarray, end_ns: np.ndarray, names: list,
                   domains: list, samples: list) -> list[dict]:
    """One ``X`` per span record and one ``i`` per event record (links, Meta, KV counters aside)."""
    events = []
    columns = zip(trace_pids.tolist(), slice_tids.tolist(), start_ns.tolist(), end_ns.tolist(),
                  names, domains, frame["rids"].tolist(), frame["batch_type"].tolist(),
                  frame["metrics"].tolist(), frame["metric_incs"].tolist(),
                  frame["scopes"].tolist(), frame["attrs"].tolist(),
                  frame["rid_detail"].tolist(), samples)
    for pid, tid, start, end, name, domain, rids, batch_type, metrics, incs, scopes, attrs, \
            detail, is_sample in columns:
        if (not name or is_sample or name in _SKIPPED_RECORDS
                or _is_counter_record(name, domain)):
            continue
        args: dict = {"domain": domain} if domain else {}
        if rids:
            if len(rids) <= MAX_LISTED_RIDS:
                args["rid"] = rids if len(rids) > 1 else rids[0]
            else:
                args["requests"] = len(rids)
        if detail:
            args.update(_detail_counts(detail))
        if batch_type:
            args["batch_type"] = batch_type
        if metrics:
            args.update(metrics)
        if incs:
            args.update({f"{k}+": v for k, v in incs.items()})
        if scopes:
            args.update({f"scope#{k}": v for k, v in scopes.items()})
        if attrs:
            for key, value in attrs.items():
                args.setdefault(key, value)
        event = {"ph": "X" if end > start else "i", "name": name, "cat": domain or "record",
                 "pid": pid, "tid": tid, "ts": _ts(start), "args": _json_safe(args)}
        if end > start:
            event["dur"] = _ts(end - start)
        else:
            event["s"] = "t"
        events.append(event)
    return events


def _detail_counts(detail: list) -> dict:
    """Prefill / decode request and token counts of a batch's per-request dicts."""
    try:  # fast path: every dict has a numeric type and token count (the vLLM handlers' shape)
        kinds = [item["type"] for item in detail]
        tokens = [item["num_scheduled_tokens"] for item in detail]
        if not kinds or None in kinds or not {t.__class__ for t in tokens} <= _NUMBER_TYPES:
            raise TypeError
        total = sum(tokens)
        prefill = kinds.count(0)
        prefill_tokens = sum([t for t, k in zip(tokens, kinds) if k == 0]) if prefill else 0
        return {"prefill_requests": prefill, "decode_requests": len(kinds) - prefill,
                "prefill_tokens": prefill_tokens, "decode_tokens": total - prefill_tokens}
    except (KeyError, TypeError):
        return _detail_counts_checked(detail)


def _detail_counts_checked(detail: list) -> dict:
    """:func:`_detail_counts` for dicts with missing or odd values (item by item)."""
    prefill = decode = prefill_tokens = decode_tokens = 0
    have_tokens = False
    for item in detail:
        try:
            kind = item.get("type")
            tokens = item.get("num_scheduled_tokens")
        except AttributeError:  # not a dict: nothing to count
            continue
        if tokens.__class__ is int or tokens.__class__ is float:
            have_tokens = True
        else:
            tokens = 0
        if kind == 0 or (kind is None and item.get("iter") == 0):
            prefill += 1
            prefill_tokens += tokens
        else:
            decode += 1
            decode_tokens += tokens
    counts = {"prefill_requests": prefill, "decode_requests": decode}
    if have_tokens:
        counts["prefill_tokens"] = prefill_tokens
        counts["decode_tokens"] = decode_tokens
    return counts


def _json_safe(args: dict) -> dict:
    """NaN/inf are not JSON: replace them by None so every reader accepts the file."""
    for key, value in args.items():
        if isinstance(value, float) and not math.isfinite(value):
            args[key] = None
    return args


def _counter_events(frame: pd.DataFrame, trace_pids: np.ndarray, start_ns: np.ndarray,
                    names: list, domains: list, samples: list) -> list[dict]:
    """KV cache, queue, batch and free-form metric counters, on the process that recorded them."""
    events = []
    total_blocks: dict = {}
    step_name = _step_record_name(names, prefer=_SCHEDULE_RECORD)
    columns = zip(trace_pids.tolist(), start_ns.tolist(), names, domains,
                  frame["metrics"].tolist(), frame["scopes"].tolist(),
                  frame["attrs"].tolist(), frame["rids"].tolist(),
                  frame["rid_detail"].tolist(), samples)
    for pid, start, name, domain, metrics, scopes, attrs, rids, detail, is_sample in columns:
        ts = _ts(start)
        if _is_counter_record(name, domain):
            events += _kv_counters(pid, ts, name, metrics, total_blocks)
        elif name in _QUEUE_RECORDS:
            size = metrics.get("QueueSize") if metrics else None
            queue = str((scopes or {}).get("QueueName", "")).lower()
            if queue and _finite(size):
                events.append(_counter(f"{queue} queue", pid, ts, requests=size))
        elif name == step_name:
            events += _batch_counters(pid, ts, name, metrics, attrs, rids, detail)
        elif is_sample and metrics:
            values = {k: v for k, v in metrics.items() if _finite(v)}
            if not values:
                continue
            scope = " ".join(f"{k}={v}" for k, v in (scopes or {}).items())
            if name:  # e.g. hostUsage: one counter, one series per metric
                events.append(_counter(f"{name} ({scope})" if scope else name, pid, ts,
                                       **values))
            else:
                for key, value in values.items():
                    label = f"{key} ({scope})" if scope else key
                    events.append(_counter(label, pid, ts, value=value))
    return events


def _metric_samples(frame: pd.DataFrame, start_ns: np.ndarray, end_ns: np.ndarray) -> list:
    """Per row: is it a metric sample (no message ``type``, zero duration, has metrics)?"""
    no_type = frame["type"].isna().to_numpy()
    instant = end_ns == start_ns
    has_metrics = np.fromiter((bool(m) for m in frame["metrics"].tolist()), dtype=bool,
                              count=len(frame))
    return (no_type & instant & has_metrics).tolist()


def _kv_counters(pid: int, ts: float, name: str, metrics: dict, total_blocks: dict) -> list:
    events = []
    metrics = metrics or {}
    usage = metrics.get("UsagePercent")
    if _finite(usage):
        # vLLM writes a fraction 0..1; MindIE-style captures write a percentage.
        events.append(_counter("KV cache", pid, ts, **{"usage %": usage * 100 if usage <= 1
                                                       else usage}))
    total = metrics.get("TotalBlocks")
    if _finite(total):
        total_blocks[pid] = total
    free = metrics.get("FreeBlocks") if name == "KVCacheStatus" else metrics.get("deviceBlock")
    used = metrics.get("UsedBlocks")
    if not _finite(used) and _finite(free) and pid in total_blocks:
        used = total_blocks[pid] - free
    blocks = {k: v for k, v in (("used", used), ("free", free)) if _finite(v)}
    if blocks:
        events.append(_counter("KV blocks", pid, ts, **blocks))
    return events


def _batch_counters(pid: int, ts: float, name: str, metrics: dict, attrs: dict, rids: list,
                    detail: Optional[list]) -> list:
    events = []
    size = len(detail) if detail else len(rids) if rids else None
    if size is None and name == _SCHEDULE_RECORD:
        size = _number((attrs or {}).get("batch_size"))
    if _finite(size):
        events.append(_counter("batch size", pid, ts, requests=size))
    tokens = (metrics or {}).get("num_scheduled_tokens")
    if not _finite(tokens) and detail:
        counts = _detail_counts(detail)
        if "prefill_tokens" in counts:
            tokens = counts["prefill_tokens"] + counts["decode_tokens"]
    if not _finite(tokens) and name == "modelExec":
        tokens = _number((attrs or {}).get("batch_size"))  # modelExec's batch_size is tokens
    if _finite(tokens):
        events.append(_counter("scheduled tokens", pid, ts, tokens=tokens))
    return events


def _counter(name: str, pid: int, ts: float, **values: float) -> dict:
    return {"ph": "C", "name": name, "pid": pid, "ts": ts,
            "args": {k: float(v) for k, v in values.items()}}


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(value))


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _step_record_name(names: list, prefer: str = _STEP_RECORDS[0]) -> Optional[str]:
    """The record that stands for one engine step: ``prefer`` if present, else the other one."""
    present = set(names)
    if prefer in present:
        return prefer
    for name in _STEP_RECORDS:
        if name in present:
            return name
    return None


def _request_events(frame: pd.DataFrame, requests: Optional[pd.DataFrame],
                    trace_pids: np.ndarray, slice_tids: np.ndarray, start_ns: np.ndarray,
                    end_ns: np.ndarray, names: list, origin_us: float,
                    lanes_pid: int, flows: _FlowColumns) -> tuple[list[dict], int]:
    """Request lifecycle slices on packed lanes plus one flow per request through its steps."""
    steps = _RequestSteps(frame, trace_pids, slice_tids, start_ns, end_ns, names)
    lifecycle = _request_lifecycle(frame, requests, start_ns, end_ns, names, origin_us)
    rids = list(lifecycle)
    rids += [rid for rid in steps.groups if rid not in lifecycle]
    step_start, step_end, step_point = steps.start, steps.end, steps.point
    spans = []
    for rid in rids:
        arrival, scheduled, first_token, end, info = lifecycle.get(
            rid, (None, None, None, None, None))
        group = steps.groups.get(rid)
        known = [t for t in (arrival, scheduled, first_token, end) if t is not None]
        if group is not None:
            first, last = group[0], group[1] - 1
            if info is None:
                # Not in the request table: time the phases from the first step it was in.
                scheduled = int(step_start[first]) if scheduled is None else scheduled
                first_token = int(step_end[first]) if first_token is None else first_token
            known += [int(step_start[first]), int(step_end[last]),
                      int(step_point[last]) + 2]  # the finish lies after the last step
        if not known:
            continue
        start = min(known)
        finish = max(max(known), start + 3)  # room for flow start and finish strictly inside
        spans.append((start, finish, rid, arrival, scheduled, first_token, info, group))
    spans.sort(key=lambda s: (s[0], s[1]))
    events: list[dict] = []
    free_lanes: list = []  # heap of (end_ns, lane)
    lane_count = 0
    ends: list = []  # s and f events: (phase, flow id, lane, ts)
    group_flow = np.zeros(len(steps.groups), dtype="int64")
    for flow_id, (start, finish, rid, arrival, scheduled, first_token, info, group) in \
            enumerate(spans, start=1):
        # Strictly earlier: a flow start on a shared boundary would be ambiguous.
        if free_lanes and free_lanes[0][0] < start:
            _, lane = heapq.heapreplace(free_lanes, (finish, free_lanes[0][1]))
        else:
            lane_count += 1
            lane = lane_count
            heapq.heappush(free_lanes, (finish, lane))
        args = {"rid": rid, **(info or {})}
        events.append({"ph": "X", "name": f"request {rid}", "cat": "request", "pid": lanes_pid,
                       "tid": lane, "ts": _ts(start), "dur": _ts(finish - start),
                       "args": _json_safe(args)})
        events += _phase_slices(lanes_pid, lane, start, finish, arrival, scheduled, first_token)
        if group is not None:
            group_flow[group[2]] = flow_id
            # 1 ns inside the slice: a flow event on a slice's exact start could be read before
            # the slice opens and bind to nothing.
            ends.append((0, flow_id, lane, start + 1))
            ends.append((2, flow_id, lane, finish - 1))
    if ends:
        phase, flow_ids, lanes, ts = (np.asarray(c, dtype="int64") for c in zip(*ends))
        flows.extend(phase, flow_ids, np.full(len(ends), lanes_pid), lanes, ts)
        flows.extend(np.ones(len(steps.pid), dtype="int8"),
                     np.repeat(group_flow, steps.group_sizes), steps.pid, steps.tid,
                     step_point)
    return events, lane_count


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


def _flow(phase: str, flow_id: int, pid: int, tid: int, ts_ns: int) -> dict:
    event = {"ph": phase, "name": FLOW_NAME, "cat": FLOW_CATEGORY, "id": flow_id, "pid": pid,
             "tid": tid, "ts": _ts(ts_ns)}
    if phase == "f":
        event["bp"] = "e"  # bind to the enclosing slice (the request), not the next one
    return event


class _RequestSteps:
    """Every (request, engine step) pair as numpy columns, grouped by request in time order.

    ``groups`` maps a request id to ``(begin, stop, group index)`` in the columns; a step is
    ``modelExec`` (else ``batchFrameworkProcessing``) and only spans count, since flows bind to
    slices. ``point`` is where the request's flow passes the step: 1 ns inside its slice, where
    the step's own nested children rarely start.
    """

    def __init__(self, frame: pd.DataFrame, trace_pids: np.ndarray, slice_tids: np.ndarray,
                 start_ns: np.ndarray, end_ns: np.ndarray, names: list) -> None:
        step_name = _step_record_name(names)
        rows = np.zeros(0, dtype="int64")
        if step_name is not None:
            rows = np.flatnonzero(frame["name"].to_numpy(dtype=object) == step_name)
            rows = rows[end_ns[rows] > start_ns[rows]]
            rows = rows[np.argsort(start_ns[rows], kind="stable")]
        rid_lists = frame["rids"].to_numpy(dtype=object)[rows]
        lengths = np.fromiter((len(r) for r in rid_lists), dtype="int64", count=len(rid_lists))
        flat = np.empty(int(lengths.sum()), dtype=object)
        flat[:] = list(chain.from_iterable(rid_lists))
        codes, uniques = pd.factorize(flat)
        order = np.argsort(codes, kind="stable")  # rows are in time order already
        codes = codes[order]
        step_rows = np.repeat(rows, lengths)[order]
        self.pid = trace_pids[step_rows]
        self.tid = slice_tids[step_rows]
        self.start = start_ns[step_rows]
        self.end = end_ns[step_rows]
        self.point = np.where(self.end - self.start > 1, self.start + 1, self.start)
        begins = np.flatnonzero(np.diff(codes, prepend=-1))
        stops = np.append(begins[1:], len(codes))
        self.group_sizes = stops - begins
        self.groups = {rid: (begin, stop, index) for index, (rid, begin, stop) in enumerate(
            zip(np.asarray(uniques, dtype=object).tolist(), begins.tolist(), stops.tolist()))}


def _request_lifecycle(frame: pd.DataFrame, requests: Optional[pd.DataFrame], start_ns: np.ndarray,
                       end_ns: np.ndarray, names: list, origin_us: float) -> dict:
    """rid -> (arrival, first scheduled, first token, end, args) in ns since the origin."""
    lifecycle: dict = {}
    if requests is not None and not requests.empty:
        id_column = next((c for c in _REQUEST_ID_COLUMNS if c in requests.columns), None)
        if id_column is not None:
            def column(name: str) -> list:
                if name not in requests.columns:
                    return [None] * len(requests)
                values = requests[name].to_numpy(dtype="float64", na_value=np.nan)
                return [None if not math.isfinite(v) else int(round((v - origin_us) * 1000))
                        for v in values.tolist()]

            info_columns = [c for c in _REQUEST_INFO_COLUMNS
                            if c in requests.columns]
            infos = requests[info_columns].to_dict("records") if info_columns else None
            for index, (rid, arrival, scheduled, first_token, end) in enumerate(zip(
                    requests[id_column].tolist(), column("arrival_us"),
                    column("first_scheduled_us"), column("first_token_us"),
                    column("end_us"))):
                info = {k: _plain(v) for k, v in infos[index].items()} if infos else {}
                lifecycle[str(rid)] = (arrival, scheduled, first_token, end, info)
            return lifecycle
    # No request table: arrival = first httpReq, first scheduling = first schedule span,
    # end = last httpRes of each request id (first token: see _request_events).
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
    return lifecycle


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
