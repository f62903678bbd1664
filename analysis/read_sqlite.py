"""Read ``ms_service_*.db`` captures (msserviceprofiler's SQLite layout) into the builder.

Table ``Mstx`` holds the records, streamed in chunks; table ``Meta`` the process metadata. A
truncated or damaged file is salvaged up to the damage; every problem goes to the report.
"""

from __future__ import annotations

import math
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder, parse_message
from otel_vllm_ascend.analysis.read_results import ReadReport, _apply_meta, _process
from otel_vllm_ascend.analysis.time_window import TimeWindow, record_us

_FETCH = 1024


def _host_from_stem(stem: str, pid: int) -> str:
    body = stem[len("ms_service_"):] if stem.startswith("ms_service_") else stem
    match = re.match(rf"^(.*)-{pid}(?:-\d+)?$", body)
    if match:
        return match.group(1)
    match = re.match(r"^(.*?)-\d+(?:-\d+)?$", body)
    return match.group(1) if match else body


class _DbRows:
    """Decodes the ``Mstx`` rows of one file chunk by chunk into the builder."""

    def __init__(self, path: Path, meta: dict[str, str], builder: RecordBuilder,
                 processes: dict) -> None:
        self.source = path.stem
        self.meta = meta
        self.builder = builder
        self.processes = processes
        self.seen_pids: dict[int, ProcessInfo] = {}
        self.rows = 0
        self.kept = 0  # rows the builder kept (fewer than rows with a time window)
        self.bad = 0
        self.first_bad: Any = None

    def feed(self, chunk: list) -> None:
        add = self.builder.add
        source = self.source
        seen = self.seen_pids
        self.rows += len(chunk)
        for mark_id, message, pid, tid, start_ns, end_ns in chunk:
            decoded = parse_message(message)
            if decoded is None or not isinstance(start_ns, (int, float)):
                self._bad(mark_id)
                continue
            if end_ns is None:
                end_ns = start_ns
            try:
                pid = int(pid or 0)
                tid = int(tid or 0)
                mark = int(mark_id or 0)
                dur_us = (end_ns - start_ns) / 1000.0
            except (TypeError, ValueError):  # a column holding text where a number belongs
                self._bad(mark_id)
                continue
            proc = seen.get(pid)
            if proc is None:
                host = self.meta.get("hostname") or _host_from_stem(source, pid)
                proc = seen[pid] = _process(self.processes, host, pid, source)
                _apply_meta(proc, self.meta)
            kept = add(source, pid, tid, mark, start_ns / 1000.0, end_ns / 1000.0, decoded,
                       None, dur_us, start_ns)
            proc.records += kept
            self.kept += kept

    def _bad(self, mark_id: Any) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = mark_id

    def finish(self) -> None:
        if not self.seen_pids and self.meta:
            # A file with Meta rows but no usable record still names its process.
            pid = _pid_from_stem(self.source)
            if pid is not None:
                host = self.meta.get("hostname") or _host_from_stem(self.source, pid)
                _apply_meta(_process(self.processes, host, pid, self.source), self.meta)


def _read_db(path: Path, builder: RecordBuilder, processes: dict, report: ReadReport) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        report.problems.append(f"{path}: cannot open as SQLite ({exc}); file skipped")
        return False
    try:
        meta, meta_error = _read_meta(conn)
        sink = _DbRows(path, meta, builder, processes)
        error = _read_mstx(conn, sink.feed, window=builder.window)
    finally:
        conn.close()
    if error is not None and not sink.rows and "malformed" in (meta_error or error):
        salvaged = _salvage(path)
        if salvaged is not None:
            meta, rows = salvaged
            meta_error = None
            error = "truncated or damaged database"
            sink = _DbRows(path, meta, builder, processes)
            sink.feed(rows)
    if error is not None and not sink.rows:
        if meta_error is not None and "no such table" not in error:
            error = f"not a readable capture ({meta_error})"
        report.problems.append(f"{path}: {error}; file skipped")
        return False
    if meta_error is not None:
        report.problems.append(f"{path}: table Meta unreadable ({meta_error}); process"
                               " details (host name, role) guessed")
    if error is not None:
        report.problems.append(
            f"{path}: {error}; kept the {sink.rows} rows read before the damage"
            if builder.window is None else f"{path}: {error}; kept the {sink.kept} rows of"
            " the time window read before the damage")
    sink.finish()
    if sink.bad:
        report.unparsable += sink.bad
        report.problems.append(
            f"{path}: {sink.bad} row(s) could not be decoded (first at markId"
            f" {sink.first_bad}); those rows were skipped")
    return True


def query(path: Path, sql: str) -> list:
    """The rows of one query on ``path``, opened read-only (``sqlite3.Error`` passes)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def time_span(paths: list) -> Optional[tuple[int, int]]:
    """(first, last) record start in whole µs of the ``Mstx`` rows of these files (those that
    are SQLite captures; None when none has a row): where a time window could lie."""
    found: list[int] = []
    for path in paths:
        try:
            [row] = query(path, "SELECT min(timestamp), max(timestamp) FROM Mstx WHERE"
                                " typeof(timestamp) IN ('integer', 'real')")
        except sqlite3.Error:
            continue
        found.extend(record_us(value) for value in row if value is not None)
    return (min(found), max(found)) if found else None


def _pid_from_stem(stem: str) -> Optional[int]:
    match = re.search(r"-(\d+)(?:-\d+)?$", stem)
    return int(match.group(1)) if match else None


def _read_meta(conn: sqlite3.Connection) -> tuple[dict[str, str], Optional[str]]:
    """Meta rows as a dict, and the error text when the table exists but cannot be read."""
    try:
        rows = conn.execute("SELECT name, value FROM Meta").fetchall()
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        return {}, None if "no such table" in text else text  # Meta itself is optional
    return {str(name): "" if value is None else str(value) for name, value in rows}, None


def _salvage(path: Path) -> Optional[tuple[dict[str, str], list]]:
    """Rows of a truncated file: cut to whole pages, fix the page count, read until the damage."""
    try:
        data = bytearray(path.read_bytes())
    except OSError:
        return None
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        return None
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = len(data) // page_size if page_size else 0
    if pages < 2:
        return None
    del data[pages * page_size:]
    data[28:32] = pages.to_bytes(4, "big")
    with tempfile.TemporaryDirectory(prefix="otel-vllm-salvage-") as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(bytes(data))
        conn = sqlite3.connect(copy)
        try:
            meta: dict[str, str] = {}
            rows: list = []
            for query, sink in (("SELECT name, value FROM Meta", None),
                                ("SELECT markId, message, pid, tid, timestamp, endTimestamp"
                                 " FROM Mstx", rows)):
                try:
                    for row in conn.execute(query):  # row by row: keep all before the damage
                        if sink is None:
                            meta[str(row[0])] = "" if row[1] is None else str(row[1])
                        else:
                            sink.append(row)
                except sqlite3.DatabaseError:
                    pass
        finally:
            conn.close()
    return (meta, rows) if rows else None


_SELECT = "SELECT markId, message, pid, tid, timestamp, endTimestamp FROM Mstx"


def _window_filter(window: Optional[TimeWindow]) -> tuple[list[str], list[float]]:
    """SQL conditions (and their values) that pass the rows the builder may keep of a time
    window: those starting inside it, links (a row holding ``from``: the builder keeps their
    ids), and rows whose time is not a number (counted as undecodable there). The rest are
    never decoded. The bounds are a µs wider than the window (the builder rounds a start to
    the µs), given as floats: SQLite compares them with integer times exactly, and no bound
    overflows its integers."""
    if window is None:
        return [], []
    bounds, values = [], []
    if math.isfinite(window.since_us):
        bounds.append("timestamp >= ?")
        values.append(float(window.since_us * 1000 - 1000))
    if math.isfinite(window.until_us):
        bounds.append("timestamp < ?")
        values.append(float(window.until_us * 1000 + 1000))
    return ["(" + " AND ".join(bounds) + " OR instr(message, 'from') > 0"
            " OR typeof(timestamp) NOT IN ('integer', 'real'))"], values


def _read_mstx(conn: sqlite3.Connection, feed: Callable[[list], None],
               rowids: Optional[tuple[int, int]] = None,
               window: Optional[TimeWindow] = None) -> Optional[str]:
    """Stream ``Mstx`` rows to ``feed`` in chunks; returns the error text if reading stopped.

    ``rowids`` (first, last): only the rows in that rowid range, in rowid order (the order of
    the whole table's scan: ``read_parallel`` reads a large file a range at a time).
    ``window``: SQLite leaves out the rows the builder would not keep (:func:`_window_filter`).
    """
    conditions, values = _window_filter(window)
    if rowids is not None:
        conditions.insert(0, "rowid >= ? AND rowid <= ?")
        values[:0] = rowids
    try:
        cursor = conn.execute(_SELECT + (" WHERE " + " AND ".join(conditions)
                                         if conditions else ""), values)
        while True:
            chunk = cursor.fetchmany(_FETCH)
            if not chunk:
                break
            feed(chunk)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "no such table" in text:
            return "table Mstx is missing (not a service capture)"
        if "no such column" in text:
            return f"table Mstx lacks a column ({text})"
        return f"truncated or corrupt database ({text})"
    return None
