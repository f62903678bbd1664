"""``profiler.db`` written by ``--stream``: its row tables a window's rows at a time.

The row tables (``request``, ``batch``, ``kvcache``, ``spec_decode``, ``forward``,
``request_status``) get each window's rows as they come; the views, the summaries, the link
row and the Insight tables are added at the end, from what the stream keeps
(writers.finish_tables), then the trace's tables (stream_trace.py) as one analysis adds them.

A column's SQLite type is what one analysis gives the whole table (``to_sql``'s inference
over every value). A window sees only its own values, so the types are kept as a small sample
of each table (one row per kind of value of each column: the inference depends on the kinds
present, not on how many): when a window brings a kind that changes a type (a column empty
until then, integers then floats), the table is made again with the new types and its rows
copied in, SQLite converting them as it would have on insert.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis import writers


class StreamedDb:
    """profiler.db's tables, written a window at a time; :meth:`finish` puts it in place."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn: Optional[sqlite3.Connection] = writers.new_profiler_db(self.path)
        self._samples: dict = {}  # table -> the kinds of its values so far (a few rows)
        self._schemas: dict = {}  # table -> its CREATE statement

    def add(self, name: str, table: Optional[pd.DataFrame], columns: Sequence[str]) -> None:
        """A window's rows of ``name`` (None: the window built no such table), with the CSV
        ``columns``; the first table seen creates it, empty or not, as one analysis would."""
        if table is None or self.conn is None:
            return
        if name in writers.ROW_TABLES:
            table = writers.stored_form(name, table, columns)
        else:
            table = table.reindex(columns=list(columns))
        if table.empty:
            if name not in self._schemas:
                writers.store_rows(self.conn, name, table, "replace")
                self._schemas[name] = None  # made from no rows: any row's kinds remake it
            return
        sample = _kinds_sample(table)
        if self._samples.get(name) is not None:
            sample = _kinds_sample(pd.concat([self._samples[name], sample], ignore_index=True))
        self._samples[name] = sample
        types = writers.object_types(sample)
        schema = pd.io.sql.get_schema(writers.sql_rows(sample), name, con=self.conn, dtype=types)
        if self._schemas.get(name) != schema:
            self._remake(name, schema)
        for first in range(0, len(table), writers.DB_CHUNK_ROWS):
            writers.store_rows(self.conn, name, table.iloc[first:first + writers.DB_CHUNK_ROWS],
                               "append", types)

    def _remake(self, name: str, schema: str) -> None:
        """``name`` created by ``schema``, with the rows it holds already (if any)."""
        had = name in self._schemas
        if had:
            self.conn.execute(f'ALTER TABLE "{name}" RENAME TO "{name}__before"')
        self.conn.execute(schema)
        if had:
            self.conn.execute(f'INSERT INTO "{name}" SELECT * FROM "{name}__before"'
                              " ORDER BY rowid")
            self.conn.execute(f'DROP TABLE "{name}__before"')
        self._schemas[name] = schema

    def finish(self, summaries: dict, requests: Optional[pd.DataFrame],
               batches: Optional[pd.DataFrame], columns: dict, trace_events: Any = None
               ) -> Path:
        """The views (``columns``: row table -> its CSV columns), ``summaries``, the link row
        and the Insight tables from the kept ``requests`` and ``batches``, the trace's tables
        from ``trace_events`` (trace_file.TraceEvents, if any); profiler.db put in place."""
        conn, self.conn = self.conn, None
        try:
            for name in writers.ROW_TABLES:
                if name not in self._schemas:  # one analysis stores it empty
                    writers.store_table(conn, name, writers.stored_form(name, pd.DataFrame(),
                                                                        columns[name]))
                writers.row_table_view(conn, name, columns[name])
            for name, table in summaries.items():
                writers.store_table(conn, name, table)
            empty = pd.DataFrame()
            writers.finish_tables(conn, requests if requests is not None else empty,
                                  batches if batches is not None else empty)
        finally:
            conn.close()
        return writers.finish_profiler_db(self.path, trace_events,
                                          getattr(trace_events, "origin_us", 0.0))

    def abandon(self) -> None:
        """Close and remove the unfinished file (a failed run leaves no half database)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        writers.db_tmp(self.path).unlink(missing_ok=True)


def _kinds_sample(table: pd.DataFrame) -> pd.DataFrame:
    """The first row of ``table`` and, per column, the first row of each kind of value it
    holds: what decides the types ``to_sql`` and writers.object_types give the column."""
    rows = {0}
    for column in table.columns:
        values = table[column]
        if values.dtype != object and not writers.lazy_column(values):
            continue  # the dtype decides: the first row keeps it
        kinds = pd.Series([_kind(value) for value in values.tolist()])
        rows.update(np.flatnonzero(~kinds.duplicated().to_numpy()).tolist())
    return table.iloc[sorted(rows)].reset_index(drop=True)


def _kind(value: object) -> object:
    """What the type inference tells apart: a value's type, NaN apart from other floats."""
    if isinstance(value, float) and value != value:
        return "nan"
    return type(value)

