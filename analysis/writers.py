"""Writers: the CSV files and ``profiler.db``.

CSV files are written with ``,`` separators, a header row, no index, empty cells for unknown
values, and floats with up to 6 decimals. Each file is written to a temporary name first and
then renamed, so an interrupted run never leaves a half-written file under the final name.

``profiler.db`` (SQLite) is rebuilt from scratch on every run (the reference keeps tables of
earlier runs it did not rewrite). Tables:

* ``request``, ``batch``, ``kvcache``: the CSV tables with the reference's column names
  (``execution_time``, ``queue_wait_time``, ``first_token_latency`` in ms, ``cache_hit_rate``
  NULL where the CSV says ``N/A``; ``batch``'s
  ``start_datetime``/``end_datetime``/``during_time``/``batch_size``; ``kvcache``'s
  ``start_datetime``) and views ``request_data``, ``batch_info``, ``kvcache_usage`` with the CSV
  names;
* ``request_summary``, ``batch_summary``, ``service_summary``, ``spec_decode`` (CSV names);
* ``process(pid, process_name, label, process_sort_index)``, ``thread(track_id, tid, pid,
  thread_name, thread_sort_index)``, ``slice(id, timestamp, duration, name, depth, track_id, cat,
  args, cname, end_time, flag_id)``, ``counter(id, name, pid, timestamp, cat, args)`` and
  ``flow(id, flow_id, name, cat, track_id, timestamp, type)`` from the Chrome trace, times in ns
  since the Unix epoch;
* ``data_link(source_name, target_table, target_name)`` with the row ``rid, request, http_rid``;
* for MindStudio Insight: ``data_table`` and ``translate`` (registry), the ``*_curve`` views and
  the latency tables ``first_token_latency`` and ``req_latency`` (:mod:`.insight_db`).
"""

from __future__ import annotations

import os
import sqlite3
from datetime import date, timedelta
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.json_encoding import make_encoder

# Floats are rounded to this many decimals (ms values: nanosecond resolution).
DECIMALS = 6


def _replace_atomically(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


# A text column whose cells average this many characters is quoted here rather than by pandas:
# pandas' CSV writer inspects long cells a character at a time (batch.csv's ``res_list``: 28 MB,
# 0.23 s), ``str.replace`` does the same quoting ~10x faster.
LONG_TEXT_CHARS = 64
# Rows per chunk when a long text column is spliced in: bounds the extra memory at any scale.
CSV_CHUNK_ROWS = 500
# Rows per INSERT batch of a profiler.db table: bounds the copy made for it at any scale.
DB_CHUNK_ROWS = 2000


class LazyText:
    """A cell whose text is made only when it is written (``str(cell)``): a table column of
    these is turned into text a chunk of rows at a time by :func:`write_csv` and
    :func:`write_profiler_db`, never all at once."""

    __slots__ = ()


_DAY_US = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1)
_day_texts: dict[int, str] = {}  # days since the epoch -> "YYYY-MM-DD " (a few per capture)


class DateText(int, LazyText):
    """A datetime cell: whole µs since the epoch, written as ``format_datetime_us`` (frame.py)
    writes it (``YYYY-MM-DD HH:MM:SS.ffffff+00:00``, UTC). An int of 48 bytes instead of the
    text's 89: 246,625 rows a column in batch.csv at x100, four such columns held from its
    build to the end of the run."""

    __slots__ = ()

    def __str__(self) -> str:
        days, micros = divmod(int(self), _DAY_US)
        day = _day_texts.get(days)
        if day is None:
            day = _day_texts[days] = (_EPOCH_DAY + timedelta(days=days)).strftime(
                "%Y-%m-%d ")
        seconds, micro = divmod(micros, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return f"{day}{hour:02d}:{minute:02d}:{second:02d}.{micro:06d}+00:00"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    __hash__ = None  # type: ignore[assignment]


class _NoDate(LazyText):
    """The cell of an unknown time: empty text (one object shared by all such cells)."""

    __slots__ = ()

    def __str__(self) -> str:
        return ""

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return str(other) == ""

    __hash__ = None  # type: ignore[assignment]


NO_DATE = _NoDate()


def lazy_datetimes_us(values: Any) -> np.ndarray:
    """µs since the epoch -> an object array of :class:`DateText` cells (NaN: ``NO_DATE``),
    whose texts are those of ``format_datetime_us`` (frame.py), made when written."""
    values = np.asarray(values, dtype="float64")
    known = np.isfinite(values)
    # Whole µs as that function rounds them (to even, as numpy's round).
    whole = np.round(np.where(known, values, 0.0)).astype("int64")
    out = np.empty(len(values), dtype=object)
    out[:] = NO_DATE
    out[known] = [DateText(value) for value in whole[known].tolist()]
    return out


def write_csv(path: Path, table: pd.DataFrame, columns: Sequence[str]) -> Path:
    """Write ``columns`` of ``table`` to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    subset = table.reindex(columns=list(columns)).round(DECIMALS)
    long_text = _long_text_column(subset)
    if long_text is None:
        subset.to_csv(tmp, index=False)
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            for first in range(0, max(len(subset), 1), CSV_CHUNK_ROWS):
                chunk = subset.iloc[first:first + CSV_CHUNK_ROWS]
                out.writelines(_csv_with_text_column(chunk, long_text, header=first == 0))
    _replace_atomically(tmp, path)
    return path


def _long_text_column(table: pd.DataFrame) -> Optional[int]:
    """Position of the first column of long text cells (all ``str``, none with a line break)."""
    duplicated = table.columns.duplicated()
    for position, column in enumerate(table.columns):
        values = table.iloc[:, position]
        if not len(values) or duplicated[position]:
            continue
        if lazy_column(values) and isinstance(column, str):
            return position  # a column of lazy cells by its type (date_cells.DateColumn)
        if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
            continue
        cells = values.tolist()
        if all(isinstance(cell, LazyText) for cell in cells) and isinstance(column, str):
            return position  # texts made chunk by chunk (a repr: never a line break)
        if not all(type(cell) is str for cell in cells):
            continue
        if sum(map(len, cells)) < LONG_TEXT_CHARS * len(cells):
            continue
        if any("\n" in cell or "\r" in cell for cell in cells) or not isinstance(column, str):
            continue
        return position
    return None


def _csv_quote(cell: str) -> str:
    """A cell as the csv module writes it (minimal quoting); cells with line breaks excluded."""
    if "," in cell or '"' in cell:
        return '"' + cell.replace('"', '""') + '"'
    return cell


def _csv_with_text_column(chunk: pd.DataFrame, position: int, header: bool) -> Iterator[str]:
    """``chunk.to_csv(index=False)``, the column at ``position`` quoted by :func:`_csv_quote`,
    a line at a time (each with its line break).

    pandas writes the columns left and right of it; their lines are joined with the quoted
    cells, one row's text made at a time (a chunk's cells, quoted, then joined with their
    sides, then joined into one text, held two to three copies of the chunk's text: batch.csv's
    ``res_list`` cells are tens of kB a step at x100). Falls back to pandas alone if a cell on
    either side spans lines.
    """
    n_lines = len(chunk) + (1 if header else 0)
    sides = []
    for side in (chunk.iloc[:, :position], chunk.iloc[:, position + 1:]):
        if side.shape[1] == 0:
            sides.append(None)
            continue
        lines = side.to_csv(index=False, header=header, lineterminator="\n").split("\n")
        if len(lines) != n_lines + 1:  # the text ends with a line break: one empty piece
            yield chunk.to_csv(index=False, header=header, lineterminator="\n")
            return
        lines.pop()
        if side.shape[1] == 1:
            # The csv module writes a row of one empty cell as "" (a row, not a blank line);
            # inside a wider row that cell is plain empty.
            lines = ["" if line == '""' else line for line in lines]
        sides.append(lines)
    cells = chunk.iloc[:, position].tolist()
    if header:
        cells.insert(0, chunk.columns[position])
    left, right = sides
    for row, cell in enumerate(cells):
        text = _csv_quote(cell if cell.__class__ is str else str(cell))
        if left is not None and right is not None:
            yield f"{left[row]},{text},{right[row]}\n"
        elif left is not None:
            yield f"{left[row]},{text}\n"
        elif right is not None:
            yield f"{text},{right[row]}\n"
        else:
            yield text + "\n"


_REQUEST_DB_NAMES = {"execution_time(ms)": "execution_time",
                     "queue_wait_time(ms)": "queue_wait_time",
                     "first_token_latency(ms)": "first_token_latency",
                     "time_per_output_token(ms)": "time_per_output_token"}
_BATCH_DB_NAMES = {"start_time": "start_datetime", "end_time": "end_datetime",
                   "during_time(ms)": "during_time", "total_batch_size": "batch_size",
                   "model_exec_time(ms)": "model_exec_time"}
_KV_DB_NAMES = {"start_time": "start_datetime"}


def _view(conn: sqlite3.Connection, view: str, table: str, columns: Sequence[str],
          renames: dict[str, str]) -> None:
    parts = []
    for column in columns:
        stored = renames.get(column, column)
        parts.append(f'"{stored}" AS "{column}"' if stored != column else f'"{column}"')
    conn.execute(f'CREATE VIEW "{view}" AS SELECT {", ".join(parts)} FROM "{table}"')


def store_table(conn: sqlite3.Connection, name: str, table: pd.DataFrame) -> None:
    """``table`` stored a chunk of rows at a time: only a chunk is copied and turned into SQL
    values at once (the whole table's copy was the profiler.db peak); the column types are
    those the whole table would get, set before the first chunk."""
    if not len(table):
        store_rows(conn, name, table, "replace")
        return
    types = object_types(table)
    for first in range(0, len(table), DB_CHUNK_ROWS):
        store_rows(conn, name, table.iloc[first:first + DB_CHUNK_ROWS],
                   "replace" if first == 0 else "append", types)


def object_types(table: pd.DataFrame) -> dict:
    """The SQLite types :func:`store_table` gives ``table``'s object (and lazy) columns: TEXT for
    lazy text, else what ``to_sql`` gives the whole column (``table`` not empty)."""
    objects = [column for column in table.columns
               if table[column].dtype == object or lazy_column(table[column])]
    return {column: "TEXT" if isinstance(table[column].iloc[0], LazyText)
            else _sql_type(table[column]) for column in objects}


# pandas' SQLite types of the kinds :func:`_sqlite_value` leaves; any other kind is TEXT.
_SQL_TYPES = {"floating": "REAL", "integer": "INTEGER", "boolean": "INTEGER"}


def _sql_type(column: pd.Series) -> str:
    """The SQLite type ``DataFrame.to_sql`` gives an object column of the whole table."""
    kind = pd.api.types.infer_dtype(column.map(_sqlite_value), skipna=True)
    return _SQL_TYPES.get(kind, "TEXT")


def store_rows(conn: sqlite3.Connection, name: str, table: pd.DataFrame, if_exists: str,
               types: Optional[dict] = None) -> None:
    sql_rows(table).to_sql(name, conn, index=False, if_exists=if_exists, dtype=types)


def sql_rows(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` as ``to_sql`` gets it: lazy cells and object values made what
    SQLite stores (:func:`_sqlite_value`)."""
    table = table.copy()
    for column in table.columns:
        if lazy_column(table[column]):  # the chunk's cells, as an object column holds them
            table[column] = pd.Series(table[column].to_numpy(dtype=object), index=table.index,
                                      dtype=object)
        if table[column].dtype == object:
            table[column] = table[column].map(_sqlite_value)
    return table


def lazy_column(column: pd.Series) -> bool:
    """Whether ``column``'s type holds lazy cells made when read (date_cells.DateColumn)."""
    return getattr(column.dtype, "lazy_cells", False) is True


def _sqlite_value(value: Any) -> Any:
    """Values SQLite stores as they are; anything else (lists, huge ints) as text."""
    if value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, LazyText):  # a DateText is an int: its text, as every lazy cell's
        return str(value)
    if isinstance(value, int) and -2**63 <= value < 2**63:
        return value
    return str(value)


def write_profiler_db(path: Path, request_csv: tuple[pd.DataFrame, Sequence[str]],
                      batch_csv: tuple[pd.DataFrame, Sequence[str]],
                      kvcache_csv: tuple[pd.DataFrame, Sequence[str]],
                      summaries: dict[str, pd.DataFrame],
                      trace_events: Optional[Iterable[dict]] = None,
                      trace_origin_us: float = 0.0) -> Path:
    """Write ``profiler.db`` afresh; each ``*_csv`` is (table, CSV column names)."""
    write_profiler_tables(path, request_csv, batch_csv, kvcache_csv, summaries)
    return finish_profiler_db(path, trace_events, trace_origin_us)


def write_profiler_tables(path: Path, request_csv: tuple[pd.DataFrame, Sequence[str]],
                          batch_csv: tuple[pd.DataFrame, Sequence[str]],
                          kvcache_csv: tuple[pd.DataFrame, Sequence[str]],
                          summaries: dict[str, pd.DataFrame]) -> Path:
    """The first half of :func:`write_profiler_db`: every table but the trace's, into a new
    temporary file beside ``path`` (returned); :func:`finish_profiler_db` adds the trace's and
    puts the file in place. The halves can run in two processes, one after the other: the
    tables' process need not hold the trace, nor the trace's the tables."""
    path = Path(path)
    conn = new_profiler_db(path)
    try:
        for name, (table, columns) in zip(ROW_TABLES, (request_csv, batch_csv, kvcache_csv)):
            store_table(conn, name, stored_form(name, table, columns))
            row_table_view(conn, name, columns)
        for name, table in summaries.items():
            store_table(conn, name, table)
        finish_tables(conn, request_csv[0], batch_csv[0])
    finally:
        conn.close()
    return db_tmp(path)


# The row tables with the reference's column names: table -> (CSV name -> stored name, view).
ROW_TABLES = {"request": (_REQUEST_DB_NAMES, "request_data"),
              "batch": (_BATCH_DB_NAMES, "batch_info"),
              "kvcache": (_KV_DB_NAMES, "kvcache_usage")}


def new_profiler_db(path: Path) -> sqlite3.Connection:
    """A connection to a new, empty temporary file beside ``path``, for profiler.db's tables."""
    tmp = db_tmp(Path(path))
    if tmp.exists():
        tmp.unlink()
    return _connect(tmp)


def stored_form(name: str, table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A row table (:data:`ROW_TABLES`) as profiler.db stores it: the CSV columns under the
    reference's names."""
    stored = table.reindex(columns=list(columns)).rename(columns=ROW_TABLES[name][0])
    if "cache_hit_rate" in stored.columns:  # no CacheHitRate record: NULL, not 'N/A'
        stored["cache_hit_rate"] = stored["cache_hit_rate"].map(
            lambda v: None if v == "N/A" else v)
    return stored


def row_table_view(conn: sqlite3.Connection, name: str, columns: Sequence[str]) -> None:
    """A row table's view with the CSV column names."""
    renames, view = ROW_TABLES[name]
    _view(conn, view, name, columns, renames)


def finish_tables(conn: sqlite3.Connection, requests: pd.DataFrame,
                  batches: pd.DataFrame) -> None:
    """The link row and the Insight tables (``requests`` and ``batches``: the builders' tables,
    their internal columns included), once the others are written; then commit."""
    conn.execute("CREATE TABLE data_link (source_name TEXT, target_table TEXT,"
                 " target_name TEXT)")
    conn.execute("INSERT INTO data_link VALUES ('rid', 'request', 'http_rid')")
    # --- MindStudio Insight: registry tables, *_curve views, latency tables (insight_db) ---
    from otel_vllm_ascend.analysis.insight_db import write_insight_tables

    write_insight_tables(conn, requests, batches)
    # --- end of the Insight tables ---
    conn.commit()


def finish_profiler_db(path: Path, trace_events: Optional[Iterable[dict]] = None,
                       trace_origin_us: float = 0.0, trace_part: Optional[Path] = None
                       ) -> Path:
    """The second half of :func:`write_profiler_db`: the trace's tables (if any) added to the
    file :func:`write_profiler_tables` wrote, which then replaces ``path``; or, given
    ``trace_part`` (:func:`write_trace_part`'s file), that file's tables copied in."""
    path = Path(path)
    tmp = db_tmp(path)
    try:
        if trace_part is not None:
            _copy_trace_tables(tmp, trace_part)
        elif trace_events is not None:
            _add_trace_tables(tmp, trace_events, trace_origin_us)
    finally:
        if trace_part is not None:
            Path(trace_part).unlink(missing_ok=True)
    _replace_atomically(tmp, path)
    return path


def write_trace_part(path: Path, trace_events: Iterable[dict],
                     trace_origin_us: float = 0.0) -> Path:
    """The trace's tables of ``path``'s profiler.db into a file of their own (returned), for a
    process that writes them while another writes :func:`write_profiler_tables`'s file:
    :func:`finish_profiler_db` copies them in (SQLite copies the rows, no Python value made)."""
    part = Path(path).with_name(Path(path).name + ".trace.tmp")
    part.unlink(missing_ok=True)
    try:
        _add_trace_tables(part, trace_events, trace_origin_us)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def _add_trace_tables(path: Path, trace_events: Iterable[dict], origin_us: float) -> None:
    conn = _connect(path)
    try:
        _write_trace_tables(conn, trace_events, origin_us)
        conn.commit()
    finally:
        conn.close()


def _copy_trace_tables(tmp: Path, part: Path) -> None:
    """The trace's tables of ``part`` created in ``tmp`` as :func:`_write_trace_tables` creates
    them, their rows copied as they are (ids and values as written, in rowid order: a plain
    ``SELECT *`` lets SQLite copy the stored records without decoding them)."""
    conn = _connect(tmp)
    try:
        conn.executescript(_TRACE_SCHEMA)
        conn.execute("ATTACH DATABASE ? AS part", (str(part),))
        for table in _TRACE_TABLES:
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM part.{table}")
        conn.commit()
        conn.execute("DETACH DATABASE part")
    finally:
        conn.close()


def db_tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _connect(tmp: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA journal_mode=OFF")  # a temp file renamed at the end: no journal needed
    conn.execute("PRAGMA synchronous=OFF")
    return conn


_TRACE_TABLES = ("process", "thread", "slice", "counter", "flow")
_TRACE_SCHEMA = """
        CREATE TABLE process (pid TEXT PRIMARY KEY, process_name TEXT, label TEXT,
                              process_sort_index INTEGER);
        CREATE TABLE thread (track_id INTEGER PRIMARY KEY, tid TEXT, pid TEXT,
                             thread_name TEXT, thread_sort_index INTEGER);
        CREATE TABLE slice (id INTEGER PRIMARY KEY, timestamp INTEGER,
                            duration INTEGER, name TEXT, depth INTEGER, track_id INTEGER,
                            cat TEXT, args TEXT, cname TEXT, end_time INTEGER, flag_id TEXT);
        CREATE TABLE counter (id INTEGER PRIMARY KEY, name TEXT, pid TEXT,
                              timestamp INTEGER, cat TEXT, args TEXT);
        CREATE TABLE flow (id INTEGER PRIMARY KEY, flow_id TEXT, name TEXT,
                           cat TEXT, track_id INTEGER, timestamp INTEGER, type TEXT);
    """  # the text sqlite_master keeps: its spacing is part of the schema


def _write_trace_tables(conn: sqlite3.Connection, events: Iterable[dict],
                        origin_us: float) -> None:
    conn.executescript(_TRACE_SCHEMA)
    processes: dict[str, dict] = {}
    tracks: dict[tuple, list] = {}  # (pid, tid) -> [track_id, thread_name, sort_index]

    def track(pid: Any, tid: Any) -> int:
        entry = tracks.get((pid, tid))
        if entry is None:
            entry = tracks[(pid, tid)] = [len(tracks) + 1, None, None]
        return entry[0]

    slices, counters, flows = [], [], []
    insert_slice = ("INSERT INTO slice (timestamp, duration, name, track_id, cat, args,"
                    " end_time)")
    insert_counter = "INSERT INTO counter (name, pid, timestamp, cat, args)"
    dumps = make_encoder(",", ":")
    origin_ns = origin_us * 1000.0
    columns = getattr(events, "flows", None)
    if columns is not None and hasattr(columns, "chunks") and hasattr(events, "events"):
        events = events.plain()  # the flows are written after the loop, without dicts
    else:
        columns = None
    for event in events:
        ph = event.get("ph")
        if ph in ("s", "t", "f"):
            key = (event.get("pid"), event.get("tid"))
            entry = tracks.get(key)
            track_id = entry[0] if entry is not None else track(*key)
            flows.append((str(event.get("id")), event.get("name"), event.get("cat"), track_id,
                          int(origin_ns + event["ts"] * 1000.0), ph))
        elif ph in ("X", "i", "I"):
            start = int(origin_ns + event["ts"] * 1000.0)
            duration = int(round(float(event.get("dur") or 0) * 1000))
            slices.append((start, duration, event.get("name"),
                           track(event.get("pid"), event.get("tid")), event.get("cat"),
                           dumps(event.get("args") or {}), start + duration))
            if len(slices) >= EVENT_ROWS_HELD:  # inserted as they come: bounded memory
                _insert_rows(conn, insert_slice, "(?, ?, ?, ?, ?, ?, ?)", 7, slices)
                slices = []
        elif ph == "C":
            counters.append((event.get("name"), str(event.get("pid")),
                             int(origin_ns + event["ts"] * 1000.0), event.get("cat"),
                             dumps(event.get("args") or {})))
            if len(counters) >= EVENT_ROWS_HELD:
                _insert_rows(conn, insert_counter, "(?, ?, ?, ?, ?)", 5, counters)
                counters = []
        elif ph == "M":
            pid = event.get("pid")
            args = event.get("args") or {}
            name = event.get("name")
            if name in ("process_name", "process_labels", "process_sort_index"):
                proc = processes.setdefault(str(pid), {})
                if name == "process_name":
                    proc["name"] = args.get("name")
                elif name == "process_labels":
                    proc["label"] = args.get("labels")
                else:
                    proc["sort"] = args.get("sort_index")
            elif name in ("thread_name", "thread_sort_index"):
                tid = event.get("tid")
                track(pid, tid)
                tracks[(pid, tid)][1 if name == "thread_name" else 2] = (
                    args.get("name") if name == "thread_name" else args.get("sort_index"))
    # Flows before the thread table: they may add tracks that no slice uses.
    conn.executemany("INSERT INTO flow (flow_id, name, cat, track_id, timestamp, type)"
                     " VALUES (?, ?, ?, ?, ?, ?)", flows)
    if columns is not None:
        _insert_flow_columns(conn, columns, track, int(round(origin_ns)))
    conn.executemany("INSERT INTO process VALUES (?, ?, ?, ?)",
                     [(pid, p.get("name", pid), p.get("label"), p.get("sort"))
                      for pid, p in processes.items()])
    conn.executemany("INSERT INTO thread VALUES (?, ?, ?, ?, ?)",
                     [(e[0], str(tid), str(pid), e[1], e[2])
                      for (pid, tid), e in tracks.items()])
    _insert_rows(conn, insert_slice, "(?, ?, ?, ?, ?, ?, ?)", 7, slices)
    _insert_rows(conn, insert_counter, "(?, ?, ?, ?, ?)", 5, counters)


def _insert_flow_columns(conn: sqlite3.Connection, columns: Any, track: Any,
                         origin_ns: int) -> None:
    """``flow`` rows straight from the trace's flow chunks (phase index into "stf").

    Name and category are the same for every row, so they are SQL literals; ``flow_id`` is
    bound as an integer and stored as text by the column's TEXT affinity (the same text
    ``str()`` gives). Tracks new to the table are numbered in order of first appearance.
    """
    from otel_vllm_ascend.analysis.trace_file import FLOW_CATEGORY, FLOW_NAME

    if not len(columns):
        return
    _insert_rows(
        conn, "INSERT INTO flow (flow_id, name, cat, track_id, timestamp, type)",
        f"(?, {_sql_text(FLOW_NAME)}, {_sql_text(FLOW_CATEGORY)}, ?, ?, ?)", 4,
        _flow_rows(columns, track, origin_ns))


def _flow_rows(columns: Any, track: Any, origin_ns: int) -> Iterable[tuple]:
    """The flow rows, made from the trace's flow parts a chunk at a time (two million at x10);
    the chunks' (pid, tid) pairs get their track ids in order of first appearance."""
    phases = ("s", "t", "f")
    for chunk in columns.chunks(TRACE_ROWS_HELD):
        pairs = np.stack((chunk.pid, chunk.tid), axis=1)
        unique, first_at, inverse = np.unique(pairs, axis=0, return_index=True,
                                              return_inverse=True)
        track_of_pair = np.zeros(len(unique), dtype="int64")
        for index in np.argsort(first_at, kind="stable").tolist():
            pid, tid = unique[index].tolist()
            track_of_pair[index] = track(pid, tid)
        yield from zip(chunk.flow_id.tolist(),
                       track_of_pair[inverse.reshape(-1)].tolist(),
                       (chunk.ts_ns + origin_ns).tolist(),
                       [phases[p] for p in chunk.phase.tolist()])


# Trace rows held before they are inserted (a multiple of ROWS_PER_INSERT).
TRACE_ROWS_HELD = 10_000
# Slice and counter rows (their args as JSON text) held before they are inserted: below
# FORK_BELOW_BYTES they are held beside the forked writer's work (write_trace_part).
EVENT_ROWS_HELD = 2_000
# Rows per INSERT statement for the trace tables: one statement step per 100 rows instead of
# per row halves the time of the 206,000-row flow table.
ROWS_PER_INSERT = 100


def _insert_rows(conn: sqlite3.Connection, insert: str, row: str, width: int,
                 rows: Iterable[Sequence]) -> None:
    """``insert VALUES row, row, ...`` for ``rows`` (``width`` values each), in order."""
    many = f"{insert} VALUES {', '.join([row] * ROWS_PER_INSERT)}"
    rows = iter(rows)
    while True:
        chunk = list(islice(rows, TRACE_ROWS_HELD))  # bounded memory at any scale
        if not chunk:
            return
        whole = len(chunk) // ROWS_PER_INSERT * ROWS_PER_INSERT
        if whole:
            flat = list(chain.from_iterable(chunk[:whole]))
            if len(flat) != whole * width:  # a row of another width: one statement per row
                whole = 0
            else:
                values = iter(flat)
                conn.executemany(many, zip(*[values] * (width * ROWS_PER_INSERT)))
        if whole < len(chunk):
            conn.executemany(f"{insert} VALUES {row}", chunk[whole:])


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
