"""Reading the ``ms_service_*.db`` files on several cores.

The files of several processes (hosts, threads in the C library's layout) and the rowid ranges
of a large file are read by worker processes, each into a small records builder of its own;
this process merges the parts in the order the serial reader reads the rows (file by file,
rowid by rowid), so the records frame is the serial reader's, row for row and value for value.

What the parts cannot know is another part's link records (``from`` external, ``to`` internal
id): a worker maps the ids of its part with the links it read, and this process maps the rest
once every link is known. That gives the serial reader's ids when every internal id is linked
to one external id and no id is both (the capture of any vLLM service); otherwise the result
could depend on the reading order, and the capture is read again serially. A rowid range that
cannot be read (a damaged file) has its whole file read again here, by the serial reader's code,
which salvages what it can; a worker that fails or dies has its files read here too, with one
warning naming each.

Used by :func:`readers.read_captures` when it pays (several cores, ``fork``, enough rows, no
OTLP files); ``OTEL_VLLM_ANALYZE_SERIAL=1`` keeps everything in one process.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from otel_vllm_ascend.analysis.allocator import give_back_free_memory
from otel_vllm_ascend.analysis.frame import (
    DICT_COLUMNS,
    ProcessInfo,
    RecordBuilder,
    canonical_rid,
    map_request_ids,
)
from otel_vllm_ascend.analysis.narrow_ints import narrowest
from otel_vllm_ascend.analysis.read_results import (
    ReadReport,
    _apply_meta,
    _complete_processes,
    _process,
)
from otel_vllm_ascend.analysis.read_sqlite import (
    _DbRows,
    _host_from_stem,
    _pid_from_stem,
    _read_db,
    _read_meta,
    _read_mstx,
)
from otel_vllm_ascend.analysis.record_dicts import RecordDicts
from otel_vllm_ascend.analysis.rid_detail import RequestDetail
from otel_vllm_ascend.analysis.rid_lists import RidLists, consumed
from otel_vllm_ascend.analysis.time_window import TimeWindow

MIN_ROWS = 20_000  # fewer rows in all: the serial reader is as fast
RANGE_ROWS = 8_192  # rows of a large file read as one task
_AHEAD = 2  # tasks submitted per worker ahead of the merge (bounds the parts held here)
_LINK_TYPE = 3
# Number columns the parts send as arrays, in the types RecordBuilder.build makes of them.
_ARRAYS = {"pid": "int64", "tid": "int64", "mark_id": "int64", "start_us": "float64",
           "end_us": "float64", "dur_us": "float64"}
# Text columns the parts send as category codes (a pointer a record as lists: 20 MB a column
# at x100, unpickled and held until the frame is built), joined by their categories' union.
_TEXTS = ("source", "name", "domain", "batch_type")
_NARROW = ("pid", "tid", "mark_id")  # int64 as read: 2-4 bytes a record are enough

_NO_IDS: list = []  # a sent batch detail's ids until the frame's build; never modified

Progress = Callable[[int, int, str], None]


def worker_count() -> int:
    """Cores this process may use; 1 where reading in parallel is not possible or wanted."""
    if os.environ.get("OTEL_VLLM_ANALYZE_SERIAL") == "1":
        return 1
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1  # spawned workers would import pandas again: not worth it
    if sys.version_info < (3, 11):
        # Before 3.11 a fork-based ProcessPoolExecutor forks workers while its management
        # thread runs (CPython issue 90622: a child can deadlock); 3.11 forks them all first.
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores


@dataclass
class _Task:
    index: int  # the file's place in the reading order
    path: Path
    rowids: Optional[tuple[int, int]] = None  # None: the whole file
    window: Optional[TimeWindow] = None  # --since / --until (time_window.py)


@dataclass
class _Part:
    """What one task read: the builder's columns and what the merge needs besides."""

    columns: dict[str, list]
    links: list[tuple[str, str]]  # (internal, external) in reading order
    held: set  # the request ids the records hold after the part's own links
    procs: list[tuple[str, int, dict, int]]  # (host, pid, meta, records), in first-seen order
    whole: bool = False  # the whole file (read by the serial reader's code), not a range
    ok: bool = True  # the file counts as read (whole-file tasks)
    problems: list[str] = field(default_factory=list)
    unparsable: int = 0
    failed: Optional[str] = None  # a range that could not be read: its file is read again
    bad: int = 0  # rows of a range that could not be decoded, and the first one's markId
    first_bad: Any = None
    meta: dict = field(default_factory=dict)


def plan(paths: list[Path], window: Optional[TimeWindow] = None) -> tuple[list[_Task], int]:
    """The tasks for ``paths`` (rowid ranges of the large files) and the rows in all."""
    tasks: list[_Task] = []
    total = 0
    for index, path in enumerate(paths):
        span = _rowid_span(path)
        if span is None:
            tasks.append(_Task(index, path, window=window))
            continue
        first, last = span
        total += last - first + 1
        if last - first + 1 <= RANGE_ROWS:
            tasks.append(_Task(index, path, window=window))
            continue
        for low in range(first, last + 1, RANGE_ROWS):
            tasks.append(_Task(index, path, (low, min(low + RANGE_ROWS - 1, last)), window))
    return tasks, total


def _rowid_span(path: Path) -> Optional[tuple[int, int]]:
    """(first, last) rowid of ``Mstx`` when a scan of it goes in rowid order (a plain rowid
    table, no index, trigger or view by that name); else None."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        entries = conn.execute(
            "SELECT type, sql FROM sqlite_master WHERE lower(tbl_name) = 'mstx'").fetchall()
        if len(entries) != 1 or entries[0][0] != "table" or \
                "WITHOUT ROWID" in str(entries[0][1]).upper():
            return None
        # Two queries: each of min() and max() alone is one b-tree lookup, together a scan.
        first = conn.execute("SELECT min(rowid) FROM Mstx").fetchone()[0]
        last = conn.execute("SELECT max(rowid) FROM Mstx").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    if not isinstance(first, int) or not isinstance(last, int):
        return None
    return first, last


def _links_and_held(builder: RecordBuilder) -> tuple[list[tuple[str, str]], set]:
    """The part's link records and ids, its own links applied (as ``RecordBuilder.build``)."""
    cols = builder.columns
    if builder._stale:
        map_request_ids(cols["rids"], cols["rid_detail"],
                        {rid: builder.links[rid] for rid in builder._stale})
        builder._stale = set()
    links = [(canonical_rid(attrs["to"]), canonical_rid(attrs["from"]))
             for name, rtype, attrs in zip(cols["name"], cols["type"], cols["attrs"])
             if (rtype == _LINK_TYPE or name == "link") and "to" in attrs and "from" in attrs]
    links += builder.links_outside  # a time window's: ids mapped, rows not kept
    for name, dtype in _ARRAYS.items():  # sent as arrays: no Python number per row to pickle
        cols[name] = np.asarray(cols[name], dtype=dtype)
        if name in _NARROW:
            # As narrow as the part's values allow: the concatenation takes the widest part's
            # type, and the frame's build narrows the whole column again (the same type).
            cols[name] = narrowest(cols[name], np.int8, np.int16, np.int32)
    for name in _TEXTS:
        cols[name] = pd.Categorical(cols[name])
    try:  # the message types as nullable integers (a number too large for them stays a list)
        cols["type"] = pd.array(cols["type"], dtype="Int64")
    except (TypeError, ValueError, OverflowError):
        pass
    # The dicts as typed tables: no dict per record unpickled and held until the merge's end
    # (the merge's largest objects: a few hundred MB at x100, and a heap left fragmented).
    for name in DICT_COLUMNS:
        cols[name] = RecordDicts.from_dicts(cols[name])
    # The id lists as one table too (the merge's largest column after the dicts): a batch
    # detail's own reference to its record's list is dropped, the frame's build gives it the
    # record's list in the capture's table.
    cols["rids"] = RidLists.from_lists(cols["rids"])
    for detail in cols["rid_detail"]:
        if detail is not None and detail.__class__ is RequestDetail:
            detail.rids = _NO_IDS
    return links, set(builder._ids.values())


def read_task(task: _Task) -> _Part:
    """Read one task (in a worker, or here when a worker could not)."""
    return _read_whole(task.path, task.window) if task.rowids is None else _read_range(task)


def _read_whole(path: Path, window: Optional[TimeWindow] = None) -> _Part:
    builder = RecordBuilder(window)
    processes: dict[tuple[str, int], ProcessInfo] = {}
    report = ReadReport()
    ok = _read_db(path, builder, processes, report)
    links, held = _links_and_held(builder)
    procs = [(p.host, p.pid, p.meta, p.records) for p in processes.values()]
    return _Part(builder.columns, links, held, procs, whole=True, ok=ok,
                 problems=report.problems, unparsable=report.unparsable)


def _read_range(task: _Task) -> _Part:
    builder = RecordBuilder(task.window)
    processes: dict[tuple[str, int], ProcessInfo] = {}
    try:
        conn = sqlite3.connect(f"file:{task.path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return _Part({}, [], set(), [], failed=str(exc))
    try:
        meta, meta_error = _read_meta(conn)
        sink = _DbRows(task.path, meta, builder, processes)
        error = _read_mstx(conn, sink.feed, task.rowids, task.window)
    finally:
        conn.close()
    if meta_error is not None or error is not None:
        return _Part({}, [], set(), [], failed=meta_error or error)
    links, held = _links_and_held(builder)
    procs = [(p.host, p.pid, p.meta, p.records) for p in sink.seen_pids.values()]
    return _Part(builder.columns, links, held, procs, bad=sink.bad, first_bad=sink.first_bad,
                 meta=meta)


class _Merge:
    """The parts, in reading order, into one builder's columns and the processes."""

    def __init__(self, report: ReadReport) -> None:
        self.report = report
        self.columns: dict[str, list] = RecordBuilder().columns
        self.arrays: dict[str, list] = {name: [] for name in _ARRAYS}  # concatenated at the end
        self.dicts: dict[str, list[RecordDicts]] = {name: [] for name in DICT_COLUMNS}
        self.typed: dict[str, list] = {name: [] for name in (*_TEXTS, "type")}  # joined at the end
        self.rid_parts: list[RidLists] = []
        self.links: list[tuple[str, str]] = []
        self.processes: dict[tuple[str, int], ProcessInfo] = {}
        self.parts: list[tuple[int, int, set]] = []  # (first row, end row, held ids)

    def add_file(self, path: Path, parts: list[_Part]) -> None:
        before = len(self.columns["rid_detail"])  # the one column still joined as a list
        source = path.stem
        if parts[0].whole:
            part = parts[0]
            self._rows(part)
            for host, pid, meta, records in part.procs:
                proc = _process(self.processes, host, pid, source)
                _apply_meta(proc, meta)
                proc.records += records
            self.report.problems.extend(part.problems)
            self.report.unparsable += part.unparsable
            ok = part.ok
        else:  # the ranges of one file: what _read_db does once for the whole file
            seen: dict[int, ProcessInfo] = {}
            bad, first_bad, meta = 0, None, parts[0].meta
            for part in parts:
                self._rows(part)
                for host, pid, _, records in part.procs:
                    proc = seen.get(pid)
                    if proc is None:
                        proc = seen[pid] = _process(self.processes, host, pid, source)
                        _apply_meta(proc, meta)
                    proc.records += records
                if part.bad and first_bad is None:
                    first_bad = part.first_bad
                bad += part.bad
            if not seen and meta:
                pid = _pid_from_stem(source)
                if pid is not None:
                    host = meta.get("hostname") or _host_from_stem(source, pid)
                    _apply_meta(_process(self.processes, host, pid, source), meta)
            if bad:
                self.report.unparsable += bad
                self.report.problems.append(
                    f"{path}: {bad} row(s) could not be decoded (first at markId"
                    f" {first_bad}); those rows were skipped")
            ok = True
        if ok:
            self.report.files.append(str(path))
        self.report.rows += len(self.columns["rid_detail"]) - before

    def _rows(self, part: _Part) -> None:
        first = len(self.columns["rid_detail"])
        for name, values in part.columns.items():
            if name in _ARRAYS:
                self.arrays[name].append(values)
            elif name in DICT_COLUMNS:
                self.dicts[name].append(RecordDicts.from_dicts(values))
            elif name in self.typed:
                self.typed[name].append(values)
            elif name == "rids":
                self.rid_parts.append(values if isinstance(values, RidLists)
                                      else RidLists.from_lists(values))
            else:
                self.columns[name].extend(values)
        part.columns = {}
        self.links.extend(part.links)
        self.parts.append((first, len(self.columns["rid_detail"]), part.held))

    def build(self) -> Optional[tuple[pd.DataFrame, list[ProcessInfo]]]:
        """The frame and processes; None when the links make the result order-dependent."""
        links = dict(self.links)
        if any(links[internal] != external for internal, external in self.links) or \
                not links.keys().isdisjoint(links.values()):
            return None
        cols = self.columns
        pendings = []
        for first, end, held in self.parts:  # ids whose link another part read
            pending = {rid: links[rid] for rid in held if rid in links}
            if pending:
                map_request_ids([], cols["rid_detail"][first:end], pending)
            pendings.append(pending)
        # Mapped, and equal lists of several ids made one, as the tables are joined.
        # Each part's table let go once taken (the merge's largest transient was all of them
        # held beside the whole table and a copy of each).
        rid_parts, self.rid_parts = self.rid_parts, []
        cols["rids"] = RidLists.concat_parts(consumed(rid_parts), pendings)
        del rid_parts
        give_back_free_memory()  # the parts' tables (see below)
        # Each column's parts let go once it is joined, not after all of them.
        while self.arrays:
            name, pieces = self.arrays.popitem()
            cols[name] = np.concatenate(pieces) if pieces else []
            del pieces
        while self.dicts:
            name, dict_parts = self.dicts.popitem()
            cols[name] = RecordDicts.concat_parts(dict_parts)
            del dict_parts
        while self.typed:
            name, pieces = self.typed.popitem()
            cols[name] = _join_types(pieces) if name == "type" else _join_texts(pieces)
            del pieces
        # The parts' memory, freed in pieces of a few hundred kB, is the heap's: given back
        # before the frame's build, whose arrays are each their own mapping (allocator.py).
        give_back_free_memory()
        builder = RecordBuilder()
        builder.columns = cols
        builder.links = links
        _complete_processes(builder, self.processes)
        frame = builder.build(self.processes.values())
        return frame, sorted(self.processes.values(), key=lambda p: (p.host, p.pid))


def _join_texts(pieces: list) -> Any:
    """The parts' text columns as one Categorical, categories sorted: what the frame's build
    makes of the whole column (a part read here on failure may hold a list)."""
    pieces = [piece if isinstance(piece, pd.Categorical) else pd.Categorical(piece)
              for piece in pieces if len(piece)]
    if not pieces:
        return []
    return union_categoricals(pieces, sort_categories=True) if len(pieces) > 1 else pieces[0]


def _join_types(pieces: list) -> Any:
    """The parts' message types as one nullable integer array (a list when a part's were not
    integers such an array holds: the frame's build decides then, as in the serial read)."""
    if pieces and all(isinstance(piece, pd.arrays.IntegerArray) for piece in pieces):
        return pieces[0]._concat_same_type(pieces)
    return [value for piece in pieces for value in
            (piece if isinstance(piece, list) else piece.tolist())]


def read_files(paths: list[Path], workers: int, progress: Optional[Progress] = None,
               window: Optional[TimeWindow] = None
               ) -> Optional[tuple[pd.DataFrame, list[ProcessInfo], ReadReport]]:
    """Read ``paths`` (``ms_service_*.db`` files, in reading order) with ``workers`` worker
    processes; None when the serial reader must read them (too few rows, links that make the
    result order-dependent). ``window``: only the records starting inside it."""
    tasks, total = plan(paths, window)
    if workers < 2 or total < MIN_ROWS or len(tasks) < 2:
        return None
    report = ReadReport()
    merge = _Merge(report)
    by_file: dict[int, list[_Task]] = {}
    for task in tasks:
        by_file.setdefault(task.index, []).append(task)
    context = multiprocessing.get_context("fork")
    executor = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    futures: list[Future] = []
    submitted = 0

    def submit_until(count: int) -> None:
        nonlocal submitted
        while submitted < min(count, len(tasks)):
            try:
                futures.append(executor.submit(read_task, tasks[submitted]))
            except RuntimeError:  # the pool is broken: the rest is read here
                futures.append(_failed_future(RuntimeError("worker pool not available")))
            submitted += 1

    try:
        submit_until(workers * _AHEAD)
        done = 0
        for index, path in enumerate(paths):
            if progress is not None:
                progress(index, len(paths), path.name)
            parts: list[_Part] = []
            failure: Optional[str] = None
            for _ in by_file[index]:
                submit_until(done + 1 + workers * _AHEAD)
                future = futures[done]
                futures[done] = None  # type: ignore[call-overload]
                done += 1
                try:
                    part = future.result()
                except Exception as exc:  # a worker's error, or a worker that died
                    failure = failure or f"{type(exc).__name__}: {exc}"
                    continue
                if part.failed is not None and failure is None:
                    failure = ""  # a damaged file: the serial reader's code salvages it
                parts.append(part)
            if failure is not None:
                if failure:
                    report.problems.append(f"{path}: reading in a worker process failed"
                                           f" ({failure}); read again in this process")
                parts = [_read_here(path, report, window)]
            merge.add_file(path, parts)
            del parts
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if progress is not None:
        progress(len(paths), len(paths), "")
    built = merge.build()
    if built is None:
        return None
    frame, processes = built
    return frame, processes, report


def _read_here(path: Path, report: ReadReport, window: Optional[TimeWindow]) -> _Part:
    try:
        return _read_whole(path, window)
    except Exception as exc:  # noqa: BLE001 - one message, the other files are still read
        report.problems.append(f"{path}: cannot be read ({type(exc).__name__}: {exc});"
                               " file skipped")
        columns: dict = RecordBuilder().columns
        columns.update({name: np.empty(0, dtype) for name, dtype in _ARRAYS.items()})
        return _Part(columns, [], set(), [], whole=True, ok=False)


def _failed_future(exc: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future
