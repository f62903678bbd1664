"""``--stream DURATION``: the whole capture's tables, read one window of records at a time.

A capture too large to hold whole is read ``DURATION`` at a time, each window with a margin of
records before and after it (:data:`MARGIN_US`). Every row of the tables belongs to exactly one
window, and is computed in that window's reading exactly as one analysis of the whole capture
computes it:

* a request belongs to the window its first record (its arrival) lies in, unless an earlier
  window wrote it already; the margin after the window holds the rest of its records. When an
  own request has no end yet and was still running or waiting at the end of that margin, the
  window is read again with the margin after it doubled, up to :data:`MAX_MARGINS` margins
  (then one warning says that those requests may lack what they did later);
* any other row (an engine step of batch.csv, a KV record, a forward, a queue instant, a draft
  verification of spec_decode.csv) belongs to the window its start lies in; the margins hold
  the neighbours it reads (the drafts verified and the output given just after a step). What
  lies further (the previous forward or KV row of a process idle for longer than the margin, a
  step's next step after such a pause) and what counts from the capture's start
  (``step_id``, ``forward_iter``, the relative times of forward.csv and request_status.csv)
  is carried from window to window (:class:`_Carried`).

The rows are appended to the tables (:data:`TABLE_FILES`) window after window;
``request_summary.csv``, ``batch_summary.csv``, ``service_summary.csv`` (and ``dp_summary.csv``
with data-parallel ranks), ``prefill.csv`` and ``decode.csv`` come last, from what is kept on the
way: the columns they read per request and per step (about 130 and 200 bytes) and the gaps
between outputs as counts of each value (:class:`summaries.GapCounts`). So memory is one
window's analysis plus those columns, not the records of the whole capture.

``profiler.db`` gets the same rows a window at a time (:mod:`.stream_db`), and its other
tables at the end; the trace's events are made a window at a time too (:mod:`.stream_trace`)
and written to ``chrome_tracing.json`` and profiler.db at the end; ``report.html`` is drawn at
the end from the kept columns, the KV rows' usage and the queue records' lengths (about 40
bytes each). ``span_info/`` (``--span``) is appended to as the tables are, its summary
made at the end from the durations kept; the stage breakdown's ``--split-*`` selections come
from the kept stage rows and the chosen request ids' steps.
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis import batches as batches_mod
from otel_vllm_ascend.analysis import detail_outputs, span_info, summaries, writers
from otel_vllm_ascend.analysis import forwards as forwards_mod
from otel_vllm_ascend.analysis import kvcache as kvcache_mod
from otel_vllm_ascend.analysis import operators as operators_mod
from otel_vllm_ascend.analysis import request_status as status_mod
from otel_vllm_ascend.analysis import requests as requests_mod
from otel_vllm_ascend.analysis import spec_decode as spec_mod
from otel_vllm_ascend.analysis import stages as stages_mod
from otel_vllm_ascend.analysis import trace as trace_mod
from otel_vllm_ascend.analysis.allocator import give_back_free_memory
from otel_vllm_ascend.analysis.console_summary import _print_summary, _warn_partial
from otel_vllm_ascend.analysis.every_window import cut
from otel_vllm_ascend.analysis.output_jobs import _Run
from otel_vllm_ascend.analysis.readers import read_captures
from otel_vllm_ascend.analysis.report_figures import queue_rows
from otel_vllm_ascend.analysis.rid_lists import rid_sequence
from otel_vllm_ascend.analysis.steps import StepRequestChunks, engine_steps, step_start_us
from otel_vllm_ascend.analysis.stream_db import StreamedDb
from otel_vllm_ascend.analysis.stream_trace import StreamedTrace
from otel_vllm_ascend.analysis.time_window import INFINITE, TimeWindow, text_of
from otel_vllm_ascend.analysis.trace_file import WrittenAsRead, json_written

_logger = logging.getLogger("otel_vllm_ascend.analysis")

MARGIN_US = 60_000_000  # records read before and after each window
MAX_MARGINS = 16  # the margin after a window doubles up to this many margins
# The tables appended window after window: file -> columns written.
TABLE_FILES = {"request.csv": requests_mod.CSV_COLUMNS, "batch.csv": batches_mod.CSV_COLUMNS,
               "kvcache.csv": kvcache_mod.KVCACHE_COLUMNS,
               "spec_decode.csv": spec_mod.CSV_COLUMNS, "forward.csv": forwards_mod.CSV_COLUMNS,
               "request_status.csv": status_mod.CSV_COLUMNS}
# What the summaries read of the tables, kept for the whole capture.
REQUEST_KEPT = ("partial", "has_arrival", "has_end", "arrival_us", "end_us", "ttft_ms",
                "exec_ms", "steps", "e2e_ms", "queue_wait_ms", "prompt_tokens", "reply_tokens",
                "tpot_ms", "preemptions", "swaps")
BATCH_KEPT = ("Prefill_batch_size", "Decode_batch_size", "model_exec_time(ms)", "sched_dur_us",
              "total_batch_size", "total_scheduled_tokens", "Prefill_scheduled_tokens",
              "Decode_scheduled_tokens", "host", "pid", "dp_rank", "sched_start_us", "sched_end_us",
              "exec_start_us", "exec_end_us")
# What report.html reads of the KV rows.
KV_KEPT = ("start_us", "kvcache_usage_rate", "total_blocks", "host", "pid")


class _Window(NamedTuple):
    """One window's own rows, and what the summaries keep of them."""

    requests: Optional[pd.DataFrame]
    batches: Optional[pd.DataFrame]
    kvcache: Optional[pd.DataFrame]
    spec_decode: Optional[pd.DataFrame]
    forwards: Optional[pd.DataFrame]
    request_status: Optional[pd.DataFrame]
    stages: Optional[pd.DataFrame]  # stages.step_stages of the window's steps
    gaps: Optional[summaries.PooledGaps]
    queues: Optional[pd.DataFrame]  # the queue records' lengths for report.html, if wanted
    first_us: float  # the reading's first record's start (NaN: none)
    frame: Optional[pd.DataFrame]  # the reading's records, for the trace (if wanted)
    request_ids: Optional[set]  # every id of the reading's request table, for the trace
    rid_steps: Optional[pd.DataFrame]  # (rid, type, step_id) of the --split-rid ids' steps
    spans: Optional[pd.DataFrame]  # the records span_info/ lists (--span)
    still_open: int  # own requests without an end that ran or waited until the reading's end
    unparsable: int  # records of the reading (margins included) that could not be decoded


_RID_STEP_COLUMNS = ("rid", "type", "step_id")  # a --split-rid id's steps, as kept


class _Wants(NamedTuple):
    """What a window's reading gives beyond the tables."""

    queues: bool  # report.html's queue records
    trace: bool  # the records themselves, for the trace
    details: detail_outputs.DetailOptions  # --span and --split-*


def _owned(times: np.ndarray, own: TimeWindow) -> np.ndarray:
    """Which of the rows at ``times`` (µs) ``own`` holds; the last window also holds those
    without a time, which the tables sort last."""
    mine = (times >= own.since_us) & (times < own.until_us)
    return mine | np.isnan(times) if own.until_us == INFINITE else mine


def _active_at_end(frame: pd.DataFrame, read: TimeWindow, ids: set, margin_us: int) -> int:
    """How many of ``ids`` a record names that lies in, or lasts into, the last half margin
    of ``read`` (a step longer than the margin names its requests only at its start)."""
    tail_us = read.until_us - margin_us / 2
    start = frame["start_us"].to_numpy(dtype="float64")
    end = frame["end_us"].to_numpy(dtype="float64")
    tail = frame.loc[(start >= tail_us) | (end >= tail_us), "rids"]
    named = set()
    for rids in rid_sequence(tail):
        if rids:
            named.update(rids)
    return len(named & ids)


def _read_window(source: Union[Path, Sequence[Path]], read: TimeWindow, own: TimeWindow,
                 written: dict, step_offset: int, seen_problems: set, margin_us: int,
                 wants: _Wants) -> _Window:
    frame, _processes, report = read_captures(source, None, read)
    give_back_free_memory()
    for problem in report.problems:
        if problem not in seen_problems:
            seen_problems.add(problem)
            _logger.warning("%s", problem)
    if frame.empty:
        return _Window(None, None, None, None, None, None, None, None, None, np.nan, None,
                       None, None, None, 0, report.unparsable)
    start = frame["start_us"].to_numpy(dtype="float64")
    first_us = float(np.nanmin(start)) if np.isfinite(start).any() else np.nan
    queue_table = _own_rows(queue_rows(frame), own) if wants.queues else None
    spans = (_own_rows(span_info.span_rows(frame, span_info.span_names(wants.details.spans)),
                       own) if wants.details.spans else None)
    del start
    steps = engine_steps(frame)
    per_request = StepRequestChunks(steps) if steps is not None else None
    requests = requests_mod.build_requests(frame, steps, per_request)
    own_requests = still_open = request_ids = None
    if requests is not None:
        ids = requests["http_rid"].to_numpy(dtype=object)
        request_ids = set(ids.tolist()) if wants.trace else None
        mine = _owned(requests["start_us"].to_numpy(dtype="float64"), own) & np.fromiter(
            (rid not in written for rid in ids), dtype=bool, count=len(ids))
        own_requests = requests.loc[mine].reset_index(drop=True)
        open_ids = own_requests.loc[~own_requests["has_end"].astype(bool)]
        waiting = int(open_ids["first_scheduled_us"].isna().sum())
        still_open = waiting + _active_at_end(
            frame, read, set(open_ids.loc[open_ids["first_scheduled_us"].notna(), "http_rid"]),
            margin_us)
    spec_decode = spec_mod.build_spec_decode(frame, steps, per_request)
    kvcache = kvcache_mod.build_kvcache(frame)
    batches = gaps = None
    step_rids = None
    if steps is not None:
        if own_requests is not None and summaries.gaps_from_steps(frame):
            whole = per_request.whole()
            step_rids = whole[["step_id", "rid"]] if whole is not None else None
        batches = batches_mod.build_batches(
            frame, steps, per_request, kvcache,
            spec_decode if spec_decode is not None else spec_mod.empty_spec_decode())
    if own_requests is not None:
        gaps = summaries.pooled_gaps(frame, own_requests, step_rids, batches)
    request_status = status_mod.build_request_status(frame)
    forwards = stages = rid_steps = None
    selection = wants.details.selection
    if batches is not None:
        forwards = forwards_mod.build_forwards(frame, batches)
        stage_rows = stages_mod.breakdown_rows(per_request, selection)
        stages = stages_mod.step_stages(frame, batches, stage_rows)
        if selection.rids:
            rid_steps = stage_rows.loc[stage_rows["rid"].isin(list(selection.rids)).to_numpy(),
                                       list(_RID_STEP_COLUMNS)]
        del stage_rows
    kept_frame = frame if wants.trace else None
    del frame, steps, per_request, step_rids
    # The window's steps are numbered from its reading's first: the whole capture's numbers
    # are those minus the steps before the window plus the steps of the windows before.
    before = 0
    if batches is not None:
        keys = step_start_us(batches)
        before = int(np.count_nonzero(keys < own.since_us))
        batches = batches.loc[_owned(keys, own)].reset_index(drop=True)
        if rid_steps is not None:
            rid_steps = rid_steps.loc[rid_steps["step_id"].isin(batches["step_id"]).to_numpy()]
        batches["step_id"] = batches["step_id"] - before + step_offset
    spec_decode, forwards, request_status, kvcache, stages = (
        _own_rows(table, own) for table in (spec_decode, forwards, request_status, kvcache,
                                            stages))
    for table in (spec_decode, forwards, stages, rid_steps):
        if table is not None and len(table):
            table["step_id"] = table["step_id"] - before + step_offset
    return _Window(own_requests, batches, kvcache, spec_decode, forwards, request_status, stages,
                   gaps, queue_table, first_us, kept_frame, request_ids, rid_steps, spans,
                   still_open or 0, report.unparsable)


def _own_rows(table: Optional[pd.DataFrame], own: TimeWindow) -> Optional[pd.DataFrame]:
    """The rows of ``table`` that start in ``own`` (an empty table as it is)."""
    if table is None or table.empty:
        return table
    return table.loc[_owned(table["start_us"].to_numpy(dtype="float64"), own)].reset_index(
        drop=True)


class _Carried:
    """What the tables read beyond a window's margins: the first forward of each host, the
    forwards so far of each process and the end of its last one, the first queue instant of
    each process, each process's last step (its ``step_total`` waits for the process's next
    step), its last known KV totals. Rows reach it window after window, in time order."""

    def __init__(self) -> None:
        self.forward_start: dict = {}  # host -> its first forward's start (µs)
        self.forwards: dict = {}  # (host, pid) -> forwards so far
        self.forward_end: dict = {}  # (host, pid) -> the end of its last forward (µs)
        self.queue_start: dict = {}  # (host, pid) -> its first queue instant (µs)
        self.open_step: dict = {}  # (host, pid) -> (stage table, row, start) of its last step
        self.kv_total: dict = {}  # (host, pid) -> its last known total of KV blocks
        self.kv_free: dict = {}  # (host, pid) -> its last known free KV blocks

    def kvcache_of_window(self, table: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
        """The window's KV rows, a process's first ones given the total and the free blocks
        last known before them when the reading holds none (a process idle longer than the
        margin): what kvcache.build_kvcache carries forward over the whole capture."""
        if table is None or table.empty:
            return table
        total = table["total_blocks"].to_numpy(dtype="float64").copy()
        used = table["used_blocks"].to_numpy(dtype="float64").copy()
        free = table["free_blocks"].to_numpy(dtype="float64")
        freed = table["blocks_freed"].to_numpy(dtype="float64").copy()
        usage = table["kvcache_usage_rate"].to_numpy(dtype="float64").copy()
        release = table["name"].isin(kvcache_mod.RELEASE_NAMES).to_numpy()
        processes = list(zip(table["host"].tolist(), table["pid"].tolist()))
        seen: set = set()
        for row, key in enumerate(processes):
            if key not in seen:  # its first row here: the rise of free blocks since the last
                seen.add(key)
                last_free = self.kv_free.get(key)
                if release[row] and last_free is not None and not np.isnan(free[row]):
                    freed[row] = max(free[row] - last_free, 0.0)
            if np.isnan(total[row]) and key in self.kv_total:
                total[row] = self.kv_total[key]
                if np.isnan(used[row]):
                    used[row] = total[row] - free[row]
                if np.isnan(usage[row]) and total[row] > 0:
                    usage[row] = used[row] / total[row]
            if not np.isnan(total[row]):
                self.kv_total[key] = total[row]
            if not np.isnan(free[row]):
                self.kv_free[key] = free[row]
        table["total_blocks"], table["used_blocks"] = total, used
        table["blocks_freed"], table["kvcache_usage_rate"] = freed, usage
        return table

    def forwards_of_window(self, table: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
        if table is None or table.empty:
            return table
        start = table["start_us"].to_numpy(dtype="float64")
        hosts = table["hostname"].tolist()
        for host, first in pd.Series(start).groupby(np.asarray(hosts, dtype=object),
                                                    sort=False).min().items():
            self.forward_start.setdefault(host, first)
        table["relative_start_time(ms)"] = (start - np.array(
            [self.forward_start[host] for host in hosts], dtype="float64")) / 1000.0
        processes = list(zip(hosts, table["pid"].tolist()))
        rank = table.groupby(["hostname", "pid"], sort=False).cumcount().to_numpy()
        table["forward_iter"] = rank + 1 + np.array(
            [self.forwards.get(key, 0) for key in processes], dtype="int64")
        # A process's first forward here whose previous one lies before the reading: its gap
        # from the end of the last one written.
        bubble = table["bubble_time(ms)"].to_numpy(dtype="float64").copy()
        end = table["end_us"].to_numpy(dtype="float64")
        for row in np.flatnonzero(rank == 0):
            last = self.forward_end.get(processes[row])
            if last is not None and np.isnan(bubble[row]):
                bubble[row] = (start[row] - last) / 1000.0
        table["bubble_time(ms)"] = bubble
        for row, key in enumerate(processes):
            self.forward_end[key] = end[row]
        for key, count in pd.Series(processes).value_counts(sort=False).items():
            self.forwards[key] = self.forwards.get(key, 0) + int(count)
        return table

    def stages_of_window(self, table: Optional[pd.DataFrame],
                         batches: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
        """The window's step stages, the last step before them of each process given its
        ``step_total`` (the start of its next step: here)."""
        if table is None or table.empty:
            return table
        start = table["start_us"].to_numpy(dtype="float64")
        processes = list(zip(batches["host"].tolist(), batches["pid"].tolist()))  # row by row
        total = table["step_total"].to_numpy(dtype="float64")
        for row, key in enumerate(processes):
            waiting = self.open_step.pop(key, None)
            if waiting is not None:
                earlier, at, began = waiting
                earlier.iat[at, earlier.columns.get_loc("step_total")] = (start[row]
                                                                          - began) / 1000.0
            if np.isnan(total[row]):
                self.open_step[key] = (table, row, start[row])
        return table

    def queues_of_window(self, table: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
        if table is None or table.empty:
            return table
        start = table["start_us"].to_numpy(dtype="float64")
        hosts, pids = table["hostuid"].tolist(), table["pid"].tolist()
        processes = list(zip(hosts, pids))
        for key, first in pd.Series(start).groupby([np.asarray(hosts, dtype=object),
                                                    np.asarray(pids)], sort=False).min().items():
            self.queue_start.setdefault(key, first)
        table["relative_timestamp(ms)"] = (start - np.array(
            [self.queue_start[key] for key in processes], dtype="float64")) / 1000.0
        return table


class _Appender:
    """A CSV table written a window's rows at a time, as writers.write_csv writes it whole."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = path, columns
        self.part = path.with_name(path.name + ".part")
        self.started = False

    def add(self, table: Optional[pd.DataFrame]) -> None:
        if table is None or (self.started and table.empty):
            return
        writers.write_csv(self.part, table, self.columns)
        with open(self.part, "rb") as part, open(self.path, "ab" if self.started else "wb") as out:
            if self.started:
                part.readline()  # the header, written once
            shutil.copyfileobj(part, out)
        self.part.unlink()
        self.started = True


# report.html, drawn by the caller: (run, requests, batches, kvcache, summaries, stage
# tables, a frame of the first record's start, queue records).
HtmlWriter = Callable[[_Run, Any, Any, Any, dict, dict, pd.DataFrame, Any], None]


def run_stream(source: Union[Path, Sequence[Path]], out: Path, span: TimeWindow,
               every_us: int, margin_us: int = MARGIN_US, formats: Sequence[str] = ("csv",),
               write_html: Optional[HtmlWriter] = None,
               details: Optional[detail_outputs.DetailOptions] = None) -> int:
    """Write the ``formats`` (``csv``, ``json``, ``db``; ``html`` with ``write_html``) of
    ``span`` of the capture into ``out`` (without an earlier run's CSV files: the caller's to
    remove), reading it ``every_us`` at a time with ``margin_us`` on each side, with the
    ``--span`` / ``--split-*`` ``details``; returns the exit status."""
    windows = cut(span, every_us)
    _logger.info("reading %d window(s) of %s s from %s, %s s of margin on each side",
                 len(windows), f"{every_us / 1e6:g}", span.describe(), f"{margin_us / 1e6:g}")
    details = details or detail_outputs.DetailOptions()
    outputs = _Outputs(out, formats, write_html)
    wants = _Wants(outputs.write_html is not None, outputs.trace is not None, details)
    spans = _SpanFiles(out / span_info.FOLDER, details.spans) if details.spans else None
    kept_rid_steps: list = []  # the --split-rid ids' steps
    first_us = np.inf  # the first record's start (report.html's time origin)
    carried = _Carried()
    written: dict = {}  # id -> end (µs, NaN if none) of the requests written, while they matter
    kept_requests: list = []
    kept_batches: list = []
    kept_stages: list = []  # one row of stage times per step, for prefill.csv and decode.csv
    gaps = summaries.GapCounts()  # request_summary's pooled gaps, as counts of each value
    steps_so_far = 0
    seen_problems: set = set()
    reread = 0
    for index, own in enumerate(windows, 1):
        # A row's time is compared as the tables hold it (µs as a float, which may lie a
        # fraction below the whole µs the reading rounds to): the first and last windows own
        # everything before and after them.
        own = TimeWindow(-INFINITE if index == 1 else own.since_us,
                         INFINITE if index == len(windows) else own.until_us)
        after = margin_us
        while True:
            read = TimeWindow(max(own.since_us - margin_us, span.since_us),
                              min(own.until_us + after, span.until_us))
            window = _read_window(source, read, own, written, steps_so_far, seen_problems,
                                  margin_us, wants)
            if not window.still_open or read.until_us >= span.until_us:
                break
            if after >= MAX_MARGINS * margin_us:
                _logger.warning(
                    "window %d: %d request(s) still running or waiting at %s, %s s after the"
                    " window: read no further, so their rows may lack what they did later",
                    index, window.still_open, text_of(read.until_us), f"{after / 1e6:g}")
                break
            reread += 1
            _logger.info("window %d: %d request(s) still running at %s; reading it again"
                         " with %s s after it", index, window.still_open,
                         text_of(read.until_us), f"{2 * after / 1e6:g}")
            after *= 2
        _logger.info("window %d of %d: %s", index, len(windows), windows[index - 1].describe())
        if window.unparsable:
            _logger.warning("window %d: %d record(s) read for it (margins included) could not"
                            " be decoded and were skipped", index, window.unparsable)
        if window.requests is not None:
            written.update(zip(window.requests["http_rid"].tolist(),
                               window.requests["end_us"].tolist()))
            # A request that ended a margin before the next window's reading starts is not
            # read again (its last records follow its end by a step at most).
            forget = own.until_us - 2 * margin_us
            written = {rid: end for rid, end in written.items() if not end < forget}
            kept_requests.append(window.requests[list(REQUEST_KEPT)])
            gaps.add(window.gaps)
        if window.batches is not None:
            kept_batches.append(window.batches[list(BATCH_KEPT)])
            steps_so_far += len(window.batches)
        outputs.add(dict(zip(TABLE_FILES, (
            window.requests, window.batches, carried.kvcache_of_window(window.kvcache),
            window.spec_decode, carried.forwards_of_window(window.forwards),
            carried.queues_of_window(window.request_status)))), window, own)
        if window.stages is not None:
            kept_stages.append(carried.stages_of_window(window.stages, window.batches))
        if window.rid_steps is not None:
            kept_rid_steps.append(window.rid_steps)
        if spans is not None and window.spans is not None:
            spans.add(window.spans)
        if window.first_us < first_us:
            first_us = window.first_us
        del window
        gc.collect()  # what pandas leaves in cycles (the analysis runs with the collector off)
        give_back_free_memory()
    if reread:
        _logger.info("%d window(s) read again for requests running past their margin", reread)
    requests, batches, stages = (pd.concat(kept, ignore_index=True) if kept else None
                                 for kept in (kept_requests, kept_batches, kept_stages))
    del kept_requests[:], kept_batches[:], kept_stages[:]
    if requests is None and batches is None and not np.isfinite(first_us):
        _logger.error("no records in the window(s) read; nothing to analyse")
        outputs.abandon()
        return 1
    run = outputs.run
    run.written.extend(table.path for table in outputs.tables.values() if table.started)
    rid_steps = (pd.concat(kept_rid_steps, ignore_index=True) if kept_rid_steps
                 else pd.DataFrame(columns=list(_RID_STEP_COLUMNS)))
    summary, stage_tables, operators = _write_summaries(run, source, out, requests, batches,
                                                        stages, gaps, "csv" in formats,
                                                        rid_steps, details.selection)
    if spans is not None and "csv" in formats:
        run.wrote(run.stage("span_info", spans.finish))
    outputs.finish(requests, batches, summary, stage_tables, first_us, operators)
    _warn_partial(requests)
    _print_summary(requests, batches, summary, run, out)
    return 1 if run.failed else 0


class _SpanFiles:
    """``span_info/`` written a window's spans at a time: a file per span name (rows
    appended), ``span_summary.csv`` at the end from every occurrence's duration."""

    def __init__(self, folder: Path, requested: Sequence[str]) -> None:
        self.folder, self.requested = folder, requested
        detail_outputs.empty_span_folder(folder)
        self.files: dict = {}  # span name -> its _Appender (None: not written)
        self.durations: dict = {}  # span name -> arrays of its occurrences' durations (ms)

    def add(self, rows: pd.DataFrame) -> None:
        """The span records a window owns (span_info.span_rows)."""
        for name, group in rows.groupby("name", sort=False, observed=True):
            table = span_info.occurrences(group)
            self.durations.setdefault(name, []).append(table["during_time(ms)"].to_numpy())
            if name not in self.files:
                target = detail_outputs.span_info_file(self.folder, name)
                self.files[name] = (_Appender(target, span_info.OCCURRENCE_COLUMNS)
                                    if target is not None else None)
            if self.files[name] is not None:
                self.files[name].add(table)

    def finish(self) -> Path:
        durations = {name: np.concatenate(parts) for name, parts in self.durations.items()}
        summary, missing = span_info.summary_of(self.requested, durations)
        detail_outputs.warn_missing_spans(missing)
        return detail_outputs.write_span_summary(self.folder, summary)


class _Outputs:
    """Where a window's rows go: the CSV files (``csv``), profiler.db (``db``), the trace's
    parts (``json`` or ``db``), and what report.html keeps (``html`` with ``write_html``);
    each failure is ``run``'s."""

    def __init__(self, out: Path, formats: Sequence[str],
                 write_html: Optional[HtmlWriter]) -> None:
        self.out = out
        self.run = _Run(out)
        self.tables = ({name: _Appender(out / name, columns)
                        for name, columns in TABLE_FILES.items()} if "csv" in formats else {})
        self.db = StreamedDb(out / "profiler.db") if "db" in formats else None
        self.json = "json" in formats
        self.trace = StreamedTrace(out) if self.json or self.db is not None else None
        self.write_html = write_html if "html" in formats else None
        self.kv: list = []  # report.html's: the KV rows' usage, the queue records' lengths
        self.queues: list = []

    def add(self, rows: dict, window: _Window, own: TimeWindow) -> None:
        """A window's rows (CSV file -> table or None), and its reading's records."""
        for name, table in rows.items():
            if name in self.tables:
                self.tables[name].add(table)
        if self.db is not None and self.run.stage("profiler.db", self._add_to_db, rows) is None:
            self.abandon_db()
        if self.trace is not None and window.frame is not None and self.run.stage(
                self._trace_outputs(), self._add_to_trace, window, own) is None:
            self.abandon_trace()
        if self.write_html is not None:
            kvcache = rows["kvcache.csv"]
            if kvcache is not None and not kvcache.empty:
                self.kv.append(kvcache[list(KV_KEPT)])
            if window.queues is not None:
                self.queues.append(window.queues)

    def _add_to_db(self, rows: dict) -> bool:
        for name, table in rows.items():
            self.db.add(Path(name).stem, table, TABLE_FILES[name])
        return True

    def _add_to_trace(self, window: _Window, own: TimeWindow) -> bool:
        self.trace.add(window.frame, lambda times: _owned(times, own), window.requests,
                       window.request_ids, own.until_us)
        return True

    def _trace_outputs(self) -> str:
        return "chrome_tracing.json" if self.json else "profiler.db's trace tables"

    def finish(self, requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
               summary: dict, stage_tables: dict, first_us: float, operators: Any) -> None:
        """The trace, profiler.db and report.html, from what was kept."""
        run = self.run
        trace = events = json_file = None
        if self.trace is not None:
            trace = run.stage(self._trace_outputs(), self._trace_events, operators)
            if trace is None:
                self.abandon_trace()
        if trace is not None:
            events = trace
            if self.json and self.db is not None:  # written as profiler.db reads the events
                events = json_file = WrittenAsRead(trace, self.out / "chrome_tracing.json")
        if self.db is not None:
            run.wrote(run.stage(
                "profiler.db", self.db.finish, summary, requests, batches,
                {name: TABLE_FILES[f"{name}.csv"] for name in writers.ROW_TABLES}, events))
        if self.json and trace is not None:
            run.wrote(json_written(run, self.out / "chrome_tracing.json", trace, json_file))
        if self.trace is not None:
            self.trace.remove()
        if self.write_html is not None:
            kvcache, queues = (pd.concat(kept, ignore_index=True) if kept else None
                               for kept in (self.kv, self.queues))
            del self.kv[:], self.queues[:]
            self.write_html(run, requests, batches, kvcache, summary, stage_tables,
                            pd.DataFrame({"start_us": [first_us] if np.isfinite(first_us)
                                          else []}), queues)

    def _trace_events(self, operators: Any) -> Any:
        events = self.trace.events()
        if operators is not None:
            self.run.stage("operators in chrome_tracing.json", operators_mod.merge_into_trace,
                           events, operators, self.trace.processes_frame(), trace_mod)
        return events

    def abandon_db(self) -> None:
        """profiler.db not written (the CSV files are what they are)."""
        if self.db is not None:
            self.db.abandon()
            self.db = None

    def abandon_trace(self) -> None:
        """No trace written (profiler.db without its tables, as one analysis's when its
        trace fails)."""
        if self.trace is not None:
            self.trace.remove()
            self.trace = None
        self.json = False

    def abandon(self) -> None:
        self.abandon_trace()
        self.abandon_db()


def _write_summaries(run: _Run, source: Union[Path, Sequence[Path]], out: Path,
                     requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
                     stages: Optional[pd.DataFrame], gaps: summaries.GapCounts, csv: bool,
                     rid_steps: pd.DataFrame, selection: stages_mod.StageSelection
                     ) -> tuple[dict, dict, Any]:
    """The summaries (the operator tables with operator data under ``source``) and the stage
    breakdown of every step and of the ``selection``'s (``rid_steps``: the steps of its
    request ids) (``csv``: their CSV files written); returns them and the operator data:
    (summary name -> table, phase -> stage table, operator capture or None)."""
    summary: dict[str, Any] = {}
    if requests is not None:
        summary["request_summary"] = run.stage("request_summary.csv", summaries.request_summary,
                                               None, requests, gaps=gaps)
        summary["service_summary"] = run.stage("service_summary.csv",
                                               summaries.service_summary, requests, batches)
    if batches is not None:
        summary["batch_summary"] = run.stage("batch_summary.csv", summaries.batch_summary,
                                             batches)
        summary["dp_summary"] = run.stage("dp_summary.csv", summaries.dp_summary, batches)
    operators = operators_mod.read_operator_tables(run, source, summary)  # read once
    summary = {name: table for name, table in summary.items() if table is not None}
    breakdown = None
    if stages is not None:
        breakdown = run.stage("prefill.csv / decode.csv", stages_mod.stage_breakdown, stages,
                              rid_steps, selection)
        detail_outputs.warn_unmatched_selections(breakdown)
    if csv:
        for name, table in summary.items():
            run.wrote(run.stage(f"{name}.csv", writers.write_csv, out / f"{name}.csv", table,
                                list(table.columns)))
        for phase, table in (breakdown or {}).items():
            name = stages_mod.CSV_FILES[phase]
            run.wrote(run.stage(name, writers.write_csv, out / name, table,
                                stages_mod.CSV_COLUMNS))
    return summary, dict(breakdown or {}), operators
