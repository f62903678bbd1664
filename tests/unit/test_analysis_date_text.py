"""Lazy datetime cells (writers.DateText): the texts of frame.format_datetime_us, made when a
table is written, to CSV and to profiler.db."""

import sqlite3

import numpy as np
import pandas as pd
import pytest
from datetime_values import datetime_values

from otel_vllm_ascend.analysis.frame import format_datetime_us
from otel_vllm_ascend.analysis.writers import (
    NO_DATE,
    DateText,
    LazyText,
    lazy_datetimes_us,
    store_table,
    write_csv,
)


@pytest.mark.parametrize("seed", range(4))
def test_cells_write_the_texts_of_format_datetime_us(seed):
    values = datetime_values(seed)
    cells = lazy_datetimes_us(values)
    assert cells.dtype == object and len(cells) == len(values)
    assert all(isinstance(cell, LazyText) for cell in cells)
    assert [str(cell) for cell in cells] == format_datetime_us(values).tolist()
    assert [repr(cell) for cell in cells] == format_datetime_us(values).tolist()
    unknown = ~np.isfinite(values)
    assert all(cells[i] is NO_DATE for i in np.flatnonzero(unknown))
    assert all(type(cells[i]) is DateText for i in np.flatnonzero(~unknown))


def test_cells_of_a_list_and_of_nothing():
    assert lazy_datetimes_us([]).tolist() == []
    assert [str(c) for c in lazy_datetimes_us([0, None])] == [
        "1970-01-01 00:00:00.000000+00:00", ""]


def _table(values):
    n = len(values)
    return pd.DataFrame({"n": np.arange(n, dtype=float), "t": format_datetime_us(values).to_numpy(),
                         "x": np.linspace(0, 1, n)})


def test_a_table_of_cells_is_written_as_the_table_of_texts(tmp_path):
    values = datetime_values(7)
    texts = _table(values)
    lazy = texts.copy()
    lazy["t"] = lazy_datetimes_us(values)
    write_csv(tmp_path / "a.csv", texts, ["n", "t", "x"])
    write_csv(tmp_path / "b.csv", lazy, ["n", "t", "x"])
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    for name, table in (("a", texts), ("b", lazy)):
        conn = sqlite3.connect(tmp_path / f"{name}.db")
        store_table(conn, "batch", table)
        conn.commit()
        conn.close()

    def dump(name):
        conn = sqlite3.connect(tmp_path / f"{name}.db")
        schema = conn.execute("SELECT sql FROM sqlite_master").fetchall()
        rows = conn.execute("SELECT n, t, typeof(t), x FROM batch").fetchall()
        conn.close()
        return schema, rows

    assert dump("a") == dump("b")


def test_an_object_column_beside_lazy_cells_is_typed_by_the_whole_column(tmp_path, monkeypatch):
    """The request table: its start times lazy, its cache hit rates missing in the first
    chunk and numbers later: REAL, as to_sql types the whole column (not the first chunk's
    TEXT)."""
    from otel_vllm_ascend.analysis import writers

    monkeypatch.setattr(writers, "DB_CHUNK_ROWS", 3)
    values = np.array([1.7e15 + i * 1e6 for i in range(8)])
    hits = pd.Series([None] * 4 + [0.5, None, 1.0, 0.25], dtype=object)
    lazy = pd.DataFrame({"t": lazy_datetimes_us(values), "hit": hits})
    texts = pd.DataFrame({"t": format_datetime_us(values).to_numpy(), "hit": hits})
    dumps = []
    for name, table in (("lazy", lazy), ("texts", texts)):
        conn = sqlite3.connect(tmp_path / f"{name}.db")
        if name == "lazy":
            store_table(conn, "request", table)
        else:
            # the whole table at once, its values mapped as profiler.db maps them (a bare
            # to_sql of the object column is TEXT on pandas 2.0: "mixed-integer-float")
            writers.store_rows(conn, "request", table, "replace")
        conn.commit()
        dumps.append((conn.execute("SELECT sql FROM sqlite_master").fetchall(),
                      conn.execute("SELECT t, typeof(t), hit, typeof(hit) FROM request")
                      .fetchall()))
        conn.close()
    assert dumps[0] == dumps[1]
    assert "REAL" in dumps[0][0][0][0]
